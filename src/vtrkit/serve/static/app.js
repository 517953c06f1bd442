// The player: clicking a result (or one of its moments) plays that window of the video in a
// dialog with the file name, the moment's span, the playing time and the video's other moments.
(function () {
  const dialog = document.getElementById("player");
  if (!dialog) return;
  const video = dialog.querySelector("video");
  const title = document.getElementById("player-title");
  const momentLabel = document.getElementById("player-moment");
  const now = document.getElementById("player-now");
  const others = document.getElementById("player-moments");
  let range = null; // the moment being played: pause at its end unless the user seeks away

  function clock(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    const mm = h ? String(m).padStart(2, "0") : String(m);
    return (h ? h + ":" : "") + mm + ":" + String(sec).padStart(2, "0");
  }

  function showTime() {
    const total = video.duration && isFinite(video.duration) ? " of " + clock(video.duration) : "";
    now.textContent = "now " + clock(video.currentTime) + total;
  }

  function play(item, link) {
    const start = parseFloat(link.dataset.start);
    range = { start: start, end: parseFloat(link.dataset.end) };
    title.textContent = item.dataset.name;
    momentLabel.textContent = "moment " + link.dataset.label;
    others.replaceChildren();
    item.querySelectorAll(".moment-link").forEach(function (m) {
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = "moment" + (m.dataset.start === link.dataset.start ? " current" : "");
      chip.textContent = m.dataset.label;
      chip.addEventListener("click", function () { play(item, m); });
      others.appendChild(chip);
    });
    const src = "/media/" + item.dataset.video;
    if (video.getAttribute("src") !== src) video.src = src;
    const seek = function () { video.currentTime = start; showTime(); };
    if (video.readyState >= 1) seek(); else video.addEventListener("loadedmetadata", seek, { once: true });
    if (!dialog.open) dialog.showModal();
    video.play().catch(function () {});
  }

  document.querySelectorAll(".result .moment-link").forEach(function (link) {
    link.addEventListener("click", function (event) {
      if (typeof dialog.showModal !== "function") return; // fall back to opening the file
      event.preventDefault();
      play(link.closest(".result"), link);
    });
  });
  video.addEventListener("timeupdate", function () {
    showTime();
    if (range && video.currentTime >= range.end) { video.pause(); range = null; }
  });
  video.addEventListener("seeking", function () {
    const t = video.currentTime;
    if (range && (t < range.start - 0.5 || t > range.end)) range = null;
  });
  document.getElementById("close").addEventListener("click", function () { dialog.close(); });
  dialog.addEventListener("close", function () { video.pause(); });
})();
