// Camera and face check: sends a frame every half second; the server answers with problems in words
// and decides when the check has passed (three good frames in a row). The feedback line always says what is
// happening: "Starting camera…" from the press of Start, "Checking…" while the camera's rate is measured, then
// the server's words; once passed, "All set!" stays with a Continue button until the page moves on.
(() => {
  "use strict";

  const config = JSON.parse(document.getElementById("check-config").textContent);
  const csrfToken = document.querySelector("input[name=csrfmiddlewaretoken]").value;
  const messages = config.messages;
  const CHECK_INTERVAL_MS = 500;
  // How long "All set!" stays before the page moves on by itself (Continue moves on at once), so that it can
  // be read: the same pattern as the end page's automatic return to the panel.
  const PASSED_PAUSE_MS = 3000;

  const camera = document.getElementById("camera");
  const canvas = document.getElementById("check-canvas");
  const feedback = document.getElementById("feedback");
  const startButton = document.getElementById("start-check");
  const continueLink = document.getElementById("check-continue");
  let stream = null;
  let cameraFps = 0;

  const say = (text) => { feedback.textContent = text; };
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function startCamera() {
    if (stream && stream.active) return true;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false,
      });
    } catch (error) {
      say(messages.camera_denied);
      return false;
    }
    camera.srcObject = stream;
    await camera.play();
    return true;
  }

  // Frames the camera really delivers in one second (the advertised rate can be optimistic).
  function measureFps() {
    return new Promise((resolve) => {
      const advertised = stream.getVideoTracks()[0].getSettings().frameRate || 0;
      if (!camera.requestVideoFrameCallback) { resolve(advertised); return; }
      let frames = 0;
      const started = performance.now();
      const count = () => {
        frames += 1;
        if (performance.now() - started < 1000) camera.requestVideoFrameCallback(count);
        else resolve(frames * 1000 / (performance.now() - started));
      };
      camera.requestVideoFrameCallback(count);
    });
  }

  function grabJpeg() {
    canvas.getContext("2d").drawImage(camera, 0, 0, canvas.width, canvas.height);
    return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.8));
  }

  async function postJson(url, body, contentType) {
    const response = await fetch(url, {
      method: "POST", body, credentials: "same-origin",
      headers: { "Content-Type": contentType, "X-CSRFToken": csrfToken },
    });
    return response.json();
  }

  function showPassed() {
    say(messages.passed);
    document.body.dataset.checkPassed = "true";
    continueLink.hidden = false;
    continueLink.focus();
    setTimeout(() => { location.href = config.watchUrl; }, PASSED_PAUSE_MS);
  }

  async function runAttempt() {
    startButton.hidden = true;
    say(feedback.dataset.starting);  // getUserMedia and the rate measurement take a second or more
    if (!(await startCamera())) { startButton.hidden = false; return; }
    say(feedback.dataset.checking);
    cameraFps = await measureFps();
    const deadline = Date.now() + config.attemptSeconds * 1000;
    let problems = [];
    while (Date.now() < deadline) {
      const blob = await grabJpeg();
      const answer = await postJson(`${config.frameUrl}?fps=${cameraFps.toFixed(1)}`, blob, "image/jpeg");
      if (answer.next) { location.href = answer.next; return; }
      if (answer.error) { await sleep(CHECK_INTERVAL_MS); continue; }  // throttled or refused: try the next frame
      if (answer.passed) { showPassed(); return; }
      problems = answer.problems || [];
      say(problems.length ? answer.messages[0] : messages.good);
      document.body.dataset.checkProblems = problems.join(",");
      await sleep(CHECK_INTERVAL_MS);
    }
    const result = await postJson(config.attemptFailedUrl, JSON.stringify({ problems }), "application/json");
    if (result.failed) { location.href = result.next; return; }
    say(`${(problems.length && messages[problems[0]]) || ""} ${messages.attempt_failed}`.trim());
    startButton.hidden = false;
  }

  startButton.addEventListener("click", runAttempt);
})();
