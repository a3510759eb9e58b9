// Camera and face check: sends a frame every half second; the server answers with problems in words
// and decides when the check has passed (three good frames in a row).
(() => {
  "use strict";

  const config = JSON.parse(document.getElementById("check-config").textContent);
  const csrfToken = document.querySelector("input[name=csrfmiddlewaretoken]").value;
  const messages = config.messages;
  const CHECK_INTERVAL_MS = 500;

  const camera = document.getElementById("camera");
  const canvas = document.getElementById("check-canvas");
  const feedback = document.getElementById("feedback");
  const startButton = document.getElementById("start-check");
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

  async function runAttempt() {
    startButton.hidden = true;
    if (!(await startCamera())) { startButton.hidden = false; return; }
    cameraFps = await measureFps();
    const deadline = Date.now() + config.attemptSeconds * 1000;
    let problems = [];
    while (Date.now() < deadline) {
      const blob = await grabJpeg();
      const answer = await postJson(`${config.frameUrl}?fps=${cameraFps.toFixed(1)}`, blob, "image/jpeg");
      if (answer.next) { location.href = answer.next; return; }
      if (answer.error) { await sleep(CHECK_INTERVAL_MS); continue; }  // throttled or refused: try the next frame
      if (answer.passed) {
        say(messages.passed);
        document.body.dataset.checkPassed = "true";
        location.href = config.watchUrl;
        return;
      }
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
