// Clicking a result plays its window in a dialog, starting at the window's start time.
(function () {
  const dialog = document.getElementById("player");
  if (!dialog) return;
  const video = dialog.querySelector("video");
  document.querySelectorAll(".result a.play").forEach(function (link) {
    link.addEventListener("click", function (event) {
      if (typeof dialog.showModal !== "function") return; // fall back to opening the file
      event.preventDefault();
      const item = link.closest(".result");
      video.src = "/media/" + item.dataset.video + "#t=" + item.dataset.start + "," + item.dataset.end;
      dialog.showModal();
      video.play().catch(function () {});
    });
  });
  document.getElementById("close").addEventListener("click", function () {
    video.pause();
    dialog.close();
  });
})();
