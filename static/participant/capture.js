// Viewing: a neutral baseline, then the study's ads, while webcam frames stream over a WebSocket.
// Wire format (docs/architecture.md): 20-byte big-endian header (seq, ad id, media ms, capture ms) + JPEG.
(() => {
  "use strict";

  const config = JSON.parse(document.getElementById("capture-config").textContent);
  const messages = config.messages;
  const HEADER_BYTES = 20;
  const JPEG_QUALITY = 0.8;
  const BASELINE_AD_ID = 0;
  // Close codes after which reconnecting cannot help (see the wire protocol). Others (1011 a server fault,
  // 4029 too many connects, a dropped network) reconnect with a growing delay.
  const FINAL_CLOSE_CODES = new Set([1000, 4001, 4003, 4008, 4009]);
  const CLOSE_OTHER_TAB = 4009;
  const CLOSE_TOO_MANY_CONNECTS = 4029;
  const MAX_RECONNECT_DELAY_MS = 8000;
  // Unacked frames kept for resending: five minutes at 5 fps, about 20 MB at most.
  const MAX_PENDING_FRAMES = 1500;
  const ACK_WAIT_MS = 30000;
  // The server acks a frame once its reading is stored (normally within a second); a frame unacked this
  // long was refused while the server was busy or its ack was lost, so it is sent again (stored once).
  // The server says how long in "hello", and asks for longer ("throttle") while its queue holds frames long.
  const RESEND_AFTER_MS = 5000;
  const MIN_RESEND_AFTER_MS = 1000;
  // The server takes a burst of 30 frames per socket, then 3x the capture rate: resends go at twice the
  // capture rate (at most 10 a second) beside the captured frames, after a reconnect too.
  const RESEND_PER_TICK = 10;
  // Page events kept while the socket is down (each is one row; the server also limits them).
  const MAX_QUEUED_EVENTS = 20;
  // Why this browser cannot play an ad, by the video element's MediaError code (the server records it).
  const MEDIA_ERROR_KINDS = { 1: "aborted", 2: "network", 3: "decode", 4: "not_supported" };
  // An unplayable-ad report goes again this often until the server answers (the socket may be reconnecting).
  const REPORT_RETRY_MS = 3000;
  // The server's answers to an unplayable-ad report that does not hold (any other error is not about it).
  const REPORT_REFUSALS = new Set(["bad_report", "wrong_ad", "not_viewing"]);

  const statusLine = document.getElementById("status");
  const startButton = document.getElementById("start");
  const resumeButton = document.getElementById("resume");
  const playButton = document.getElementById("play");
  const baselineScreen = document.getElementById("baseline");
  const adVideo = document.getElementById("ad");
  const camera = document.getElementById("camera");
  const canvas = document.getElementById("frame-canvas");
  const canvasContext = canvas.getContext("2d");

  const state = {
    seq: 0,
    pending: new Map(), // seq -> {message: ArrayBuffer, sentAt: ms}, until the server acks it (stored)
    queuedEvents: [],
    sent: 0,
    acked: 0,
    rejected: 0,
    socket: null,
    socketClosedForGood: false,
    stopped: false, // another tab took over: this page does nothing more
    reconnectDelayMs: 500,
    phase: null, // {adId, startedAt (baseline) | video (ad)}
    capturing: false,
    stream: null,
    lastMediaTime: 0,
    fps: config.fps, // lowered by the server's "throttle" messages while its workers catch up
    resendAfterMs: RESEND_AFTER_MS, // as "hello" and "throttle" say
    captureTimer: null,
    failAd: null, // while an ad plays: ends it as unplayable, saying why (MEDIA_ERROR_KINDS, play_failed)
    reportAnswered: false, // the server ended the session for an unplayable ad, or refused the report
  };

  const setStatus = (text) => { statusLine.textContent = text; };
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function publishProgress() {
    // Read by the end-to-end tests and handy when debugging a participant's browser.
    document.body.dataset.framesSent = String(state.sent);
    document.body.dataset.framesAcked = String(state.acked);
    document.body.dataset.framesRejected = String(state.rejected);
  }

  function socketUrl() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    return scheme + location.host + config.socketPath;
  }

  function stopForOtherTab() {
    state.stopped = true;
    state.capturing = false;
    adVideo.pause();
    setStatus(messages.other_tab);
    document.body.dataset.stoppedForOtherTab = "true";
  }

  // Resolves on the server's first hello, which says where this page's frame numbering continues.
  function connect() {
    return new Promise((resolveHello) => {
      const socket = new WebSocket(socketUrl());
      socket.binaryType = "arraybuffer";
      socket.onopen = () => {
        state.reconnectDelayMs = 500;
      };
      socket.onmessage = (event) => {
        let message;
        try { message = JSON.parse(event.data); } catch { return; }
        if (message.type === "hello") {
          state.seq = Math.max(state.seq, message.next_seq || 0);
          setResendDelay(message.resend_after_s);
          // Everything not yet acked is due again (the server stores each frame once): the first few go
          // now, the rest RESEND_PER_TICK a second, so a reconnect's backlog never floods the server.
          for (const frame of state.pending.values()) frame.sentAt = 0;
          resendStaleFrames(socket);
          for (const queued of state.queuedEvents.splice(0)) socket.send(queued);
          resolveHello();
        } else if (message.type === "ack") {
          for (const seq of message.seqs) if (state.pending.delete(seq)) state.acked += 1;
        } else if (message.type === "throttle") {
          setCaptureRate(message.fps);
          setResendDelay(message.resend_after_s);
        } else if (message.type === "ended") {
          state.reportAnswered = true; // the session ended (the socket closes next)
        } else if (message.type === "error") {
          console.warn("capture error", message.code, message.detail);
          if (message.seq !== null && state.pending.delete(message.seq)) state.rejected += 1;
          if (REPORT_REFUSALS.has(message.code)) state.reportAnswered = true;
        }
        publishProgress();
      };
      socket.onclose = (event) => {
        state.socket = null;
        if (event.code === CLOSE_OTHER_TAB) stopForOtherTab();
        if (FINAL_CLOSE_CODES.has(event.code)) {
          state.socketClosedForGood = true;
          resolveHello();
          return;
        }
        // Refused for connecting too often: wait the longest before trying again.
        if (event.code === CLOSE_TOO_MANY_CONNECTS) state.reconnectDelayMs = MAX_RECONNECT_DELAY_MS;
        // The hello this page waits for comes with the socket that succeeds.
        setTimeout(() => { if (!state.stopped) connect().then(resolveHello); }, state.reconnectDelayMs);
        state.reconnectDelayMs = Math.min(state.reconnectDelayMs * 2, MAX_RECONNECT_DELAY_MS);
      };
      state.socket = socket;
    });
  }

  function sendEvent(name) {
    const adId = state.phase ? state.phase.adId : null;
    const message = JSON.stringify({ type: "event", name, ad_id: adId, media_time_ms: currentMediaTimeMs() });
    if (state.socket && state.socket.readyState === WebSocket.OPEN) state.socket.send(message);
    else if (state.queuedEvents.length < MAX_QUEUED_EVENTS) state.queuedEvents.push(message);
  }

  function currentMediaTimeMs() {
    if (!state.phase) return 0;
    if (state.phase.adId === BASELINE_AD_ID) return Math.round(performance.now() - state.phase.startedAt);
    return Math.round(adVideo.currentTime * 1000);
  }

  function encodeFrame(seq, adId, mediaTimeMs, captureTimeMs, jpegBuffer) {
    const message = new Uint8Array(HEADER_BYTES + jpegBuffer.byteLength);
    const header = new DataView(message.buffer);
    header.setUint32(0, seq);
    header.setUint32(4, adId);
    header.setUint32(8, mediaTimeMs);
    header.setFloat64(12, captureTimeMs);
    message.set(new Uint8Array(jpegBuffer), HEADER_BYTES);
    return message.buffer;
  }

  function grabFrame() {
    if (!state.capturing || !state.phase || camera.readyState < 2) return;
    if (state.phase.adId !== BASELINE_AD_ID && adVideo.paused) return;
    // Stamp the frame when it is grabbed, not when the JPEG is ready.
    const seq = state.seq++;
    const adId = state.phase.adId;
    const mediaTimeMs = currentMediaTimeMs();
    const captureTimeMs = Date.now();
    canvasContext.drawImage(camera, 0, 0, canvas.width, canvas.height);
    canvas.toBlob(async (blob) => {
      if (!blob) return;
      const message = encodeFrame(seq, adId, mediaTimeMs, captureTimeMs, await blob.arrayBuffer());
      if (state.pending.size >= MAX_PENDING_FRAMES) state.pending.delete(state.pending.keys().next().value);
      state.pending.set(seq, { message, sentAt: Date.now() });
      state.sent += 1;
      if (state.socket && state.socket.readyState === WebSocket.OPEN) state.socket.send(message);
      publishProgress();
    }, "image/jpeg", JPEG_QUALITY);
  }

  // Frames the server has not acked for a while go again, a few per tick (the server rate-limits bursts),
  // oldest first.
  function resendStaleFrames(socket = state.socket) {
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    const staleBefore = Date.now() - state.resendAfterMs;
    const budget = Math.min(RESEND_PER_TICK, Math.max(1, Math.floor(2 * state.fps)));
    let resent = 0;
    for (const frame of state.pending.values()) {
      if (resent >= budget) break;
      if (frame.sentAt > staleBefore) continue;
      frame.sentAt = Date.now();
      socket.send(frame.message);
      resent += 1;
    }
  }
  setInterval(() => resendStaleFrames(), 1000);

  function setResendDelay(seconds) {
    if (!(seconds > 0)) return;  // an older server says nothing: keep the default
    state.resendAfterMs = Math.max(MIN_RESEND_AFTER_MS, 1000 * seconds);
    document.body.dataset.resendAfterMs = String(state.resendAfterMs);
  }

  function setCaptureRate(fps) {
    if (!(fps > 0)) return;
    state.fps = Math.min(fps, config.fps);
    document.body.dataset.captureFps = String(state.fps);
    if (state.captureTimer !== null) {
      clearInterval(state.captureTimer);
      state.captureTimer = setInterval(grabFrame, 1000 / state.fps);
    }
  }

  async function showBaseline() {
    if (!config.baselineSeconds) return;
    setStatus(messages.baseline);
    baselineScreen.hidden = false;
    state.phase = { adId: BASELINE_AD_ID, startedAt: performance.now() };
    await sleep(config.baselineSeconds * 1000);
    baselineScreen.hidden = true;
  }

  // This browser cannot play the ad (an old browser, a codec it lacks, the file unreachable).
  class AdUnplayable extends Error {
    constructor(ad, kind, mediaTimeMs) {
      super(`ad ${ad.id} cannot be played here: ${kind}`);
      this.ad = ad;
      this.kind = kind;
      this.mediaTimeMs = mediaTimeMs;
    }
  }

  // Every (re)start of the ad goes through here, so a refused play() is judged in one place. Autoplay
  // blocked (NotAllowedError): the participant presses Play. Interrupted (AbortError: a pause, when the tab
  // is hidden or the camera is lost, or a new source came first): whoever paused it plays it again. Anything
  // else is a media reason: the ad cannot be played in this browser.
  function playAdVideo() {
    const failAd = state.failAd; // (a late refusal must not end the next ad)
    adVideo.play().catch((error) => {
      const name = error && error.name;
      if (name === "NotAllowedError") {
        setStatus(messages.press_play);
        playButton.hidden = false;
      } else if (name !== "AbortError" && failAd) {
        failAd(name === "NotSupportedError" ? "not_supported" : "play_failed");
      }
    });
  }

  playButton.addEventListener("click", () => {
    playButton.hidden = true;
    setStatus(messages.keep_face);
    playAdVideo();
  });

  function playAd(ad) {
    return new Promise((resolve, reject) => {
      const listening = new AbortController(); // this ad's listeners, removed once it ended or failed
      const settle = () => {
        listening.abort();
        state.failAd = null;
        playButton.hidden = true;
      };
      state.failAd = (kind) => {
        settle();
        reject(new AdUnplayable(ad, kind, Math.round(adVideo.currentTime * 1000) || 0));
      };
      state.phase = { adId: ad.id };
      state.lastMediaTime = 0;
      adVideo.addEventListener("ended", () => { settle(); resolve(); }, { signal: listening.signal });
      const fail = state.failAd;
      adVideo.addEventListener("error", () => {
        fail(MEDIA_ERROR_KINDS[adVideo.error && adVideo.error.code] || "not_supported");
      }, { signal: listening.signal });
      adVideo.src = ad.src;
      adVideo.hidden = false;
      playAdVideo();
    });
  }

  // Participants watch the ad as an audience would: no skipping ahead or back.
  adVideo.addEventListener("timeupdate", () => {
    if (!adVideo.seeking) state.lastMediaTime = adVideo.currentTime;
  });
  adVideo.addEventListener("seeking", () => {
    if (Math.abs(adVideo.currentTime - state.lastMediaTime) > 0.5) adVideo.currentTime = state.lastMediaTime;
  });

  // Leaving the tab pauses the ad (and capture) and is recorded; coming back resumes.
  document.addEventListener("visibilitychange", () => {
    if (!state.capturing || state.stopped) return;
    if (document.hidden) {
      sendEvent("tab_hidden");
      if (!adVideo.hidden) adVideo.pause();
    } else {
      sendEvent("tab_visible");
      if (!adVideo.hidden && resumeButton.hidden && playButton.hidden) playAdVideo();
    }
  });

  async function openCamera() {
    state.stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false,
    });
    camera.srcObject = state.stream;
    await camera.play();
    // A camera that stops mid-ad (unplugged, taken by another app) pauses the ad until it is back.
    state.stream.getVideoTracks()[0].addEventListener("ended", () => {
      if (!state.capturing) return;
      sendEvent("camera_stopped");
      adVideo.pause();
      setStatus(messages.camera_stopped);
      resumeButton.hidden = false;
    });
  }

  resumeButton.addEventListener("click", async () => {
    try {
      await openCamera();
    } catch (error) {
      setStatus(messages.camera_denied);
      return;
    }
    resumeButton.hidden = true;
    sendEvent("camera_resumed");
    setStatus(messages.keep_face);
    if (!adVideo.hidden) playAdVideo();
  });

  async function waitForAcks() {
    const deadline = Date.now() + ACK_WAIT_MS;
    while (state.pending.size > 0 && !state.socketClosedForGood && Date.now() < deadline) await sleep(200);
  }

  async function finish() {
    setStatus(messages.saving);
    await waitForAcks();
    if (state.socket && state.socket.readyState === WebSocket.OPEN) {
      state.socket.send(JSON.stringify({ type: "finish" }));
      const deadline = Date.now() + 5000;
      while (!state.socketClosedForGood && Date.now() < deadline) await sleep(100);
    }
    document.getElementById("finish-form").submit();
  }

  // The ad cannot be played here: once the frames so far are stored (acked), tell the server, which ends the
  // session as Failed (ad_unplayable) and closes the socket; then the end page takes the participant back to
  // the panel (the study's Failed redirect). The report goes again every few seconds until it is answered,
  // since the socket may be reconnecting; a refused report (the session ended meanwhile, or is not at this
  // ad) also goes to the end page, which shows the outcome or leads back to the right page.
  async function reportUnplayable(failure) {
    document.body.dataset.adUnplayable = failure.kind; // read by the end-to-end tests
    await waitForAcks();
    const report = JSON.stringify({
      type: "ad_unplayable", ad_id: failure.ad.id, error: failure.kind, media_time_ms: failure.mediaTimeMs,
    });
    let sentAt = 0;
    while (!state.reportAnswered && !state.socketClosedForGood) {
      const open = state.socket && state.socket.readyState === WebSocket.OPEN;
      if (open && Date.now() - sentAt >= REPORT_RETRY_MS) {
        state.socket.send(report);
        sentAt = Date.now();
      }
      await sleep(200);
    }
    location.replace(config.endUrl);
  }

  async function start() {
    startButton.disabled = true;
    try {
      await openCamera();
    } catch (error) {
      setStatus(messages.camera_denied);
      startButton.disabled = false;
      return;
    }
    await connect();
    if (state.stopped) return;
    startButton.hidden = true;
    state.capturing = true;
    state.captureTimer = setInterval(grabFrame, 1000 / state.fps);
    let playedAll = false;
    let unplayable = null;
    try {
      await showBaseline();
      setStatus(messages.keep_face);
      for (const ad of config.ads) {
        if (state.stopped) break;
        await playAd(ad);
      }
      playedAll = !state.stopped;
    } catch (error) {
      // The browser's own error text is English and technical; the participant gets our words.
      console.warn("viewing stopped", error);
      if (error instanceof AdUnplayable) unplayable = error;
      setStatus(unplayable ? messages.ad_unplayable : messages.video_error);
    } finally {
      state.capturing = false;
      clearInterval(state.captureTimer);
      state.captureTimer = null;
      adVideo.hidden = true;
      for (const track of state.stream.getTracks()) track.stop();
    }
    if (playedAll) await finish();
    else if (unplayable && !state.stopped) await reportUnplayable(unplayable);
  }

  startButton.addEventListener("click", start);
  publishProgress();
})();
