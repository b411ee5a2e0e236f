"""The web/worker contract: task names, ``ClassifyArgs`` and the wire errors."""
from __future__ import annotations

import subprocess
import sys
from typing import Any

import msgpack
import pytest

from common import contract
from common.contract import ClassifyArgs, InvalidImageError, InvalidMessageError, MissingImageError


def test_task_name_and_mode_of_agree() -> None:
    names = [contract.task_name(batch) for batch in (False, True)]
    assert names == [contract.CLASSIFY_TASK, contract.CLASSIFY_BATCH_TASK]
    assert [contract.mode_of(name) for name in names] == ["individual", "batch"]
    with pytest.raises(KeyError):
        contract.mode_of(contract.PING_TASK)


@pytest.mark.parametrize("args", [[b"img", 5], (b"img", 5), [bytearray(b"img"), 5], [None, 3],
                                  [b"img", contract.MIN_TOP_K], [b"img", contract.MAX_TOP_K]])
def test_from_message_accepts_image_or_none_and_top_k(args: Any) -> None:
    # None: the image is stored beside the queue.
    received = ClassifyArgs.from_message(args)
    assert isinstance(received, ClassifyArgs) and received == (args[0] and b"img", args[1])
    assert type(received[0]) is type(args[0] and b"img")


@pytest.mark.parametrize("args", [
    b"img", 5, None, "img, 5",                                # scalars
    {"image": b"img", "top_k": 5},                            # a dict
    [], [b"img"], [b"img", 5, 1],                             # wrong lengths
    ["img", 5], [1, 5], [b"img", "5"], [b"img", 5.0],         # wrong types
    [b"img", True], [b"img", False],                          # bool is not an int here
    [b"img", contract.MIN_TOP_K - 1], [b"img", contract.MAX_TOP_K + 1],
], ids=repr)
def test_from_message_rejects_malformed_arguments(args: Any) -> None:
    with pytest.raises(InvalidMessageError):
        ClassifyArgs.from_message(args)


def test_classify_args_travel_as_a_positional_list() -> None:
    packed = msgpack.packb(ClassifyArgs(b"\x89PNG", 3), use_bin_type=True)
    assert msgpack.unpackb(packed, raw=False) == [b"\x89PNG", 3]


def test_wire_errors_are_named_as_celery_stores_them_with_their_answer() -> None:
    assert contract.WIRE_ERRORS == {cls.__name__: cls for cls in (InvalidImageError, InvalidMessageError,
                                                                  MissingImageError)}
    assert contract.WIRE_ERROR_CODES == {"InvalidImageError": "invalid_image", "MissingImageError": "expired",
                                         "InvalidMessageError": "invalid_request"}
    assert [(cls.status, bool(cls.message)) for cls in contract.WIRE_ERRORS.values()] == [
        (400, True), (400, True), (504, True)]
    assert issubclass(InvalidImageError, ValueError) and issubclass(MissingImageError, LookupError)


def test_common_imports_no_torch_flask_or_celery() -> None:
    code = ("import sys, common.contract, common.config; "
            "bad = {'torch', 'flask', 'celery', 'workers', 'webapp'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
