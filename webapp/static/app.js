// Progressive enhancement only: the form works without this file.
(function () {
  "use strict";
  var form = document.getElementById("upload-form");
  var input = document.getElementById("file");
  var button = document.getElementById("submit");
  var result = document.getElementById("result");
  var preview = document.getElementById("preview");
  if (!form || !input || !button || !result || !preview) {
    return;
  }
  // Show the chosen image at once; the predictions come with the page.
  input.addEventListener("change", function () {
    var file = input.files && input.files[0];
    if (!file) {
      return;
    }
    if (preview.src && preview.src.indexOf("blob:") === 0) {
      URL.revokeObjectURL(preview.src);
    }
    preview.src = URL.createObjectURL(file);
    result.hidden = false;
    // The predictions on the page belong to the previous image.
    var answer = document.getElementById("answer");
    if (answer) {
      answer.hidden = true;
    }
  });
  form.addEventListener("submit", function () {
    button.disabled = true;
    button.textContent = "Classifying\u2026";
  });
})();
