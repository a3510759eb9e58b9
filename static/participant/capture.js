// Participant capture: plays the study's ads and streams webcam frames over a WebSocket.
// Wire format (docs/architecture.md): 20-byte big-endian header (seq, ad id, media ms, capture ms) + JPEG.
(() => {
  "use strict";

  const config = JSON.parse(document.getElementById("capture-config").textContent);
  const HEADER_BYTES = 20;
  const FRAME_WIDTH = 320;
  const FRAME_HEIGHT = 240;
  const JPEG_QUALITY = 0.8;
  // Close codes after which reconnecting cannot help (see the wire protocol).
  const FINAL_CLOSE_CODES = new Set([1000, 4001, 4003, 4008]);
  // Unacked frames kept for resending: five minutes at 5 fps, about 20 MB at most.
  const MAX_PENDING_FRAMES = 1500;
  const ACK_WAIT_MS = 30000;

  const statusLine = document.getElementById("status");
  const startButton = document.getElementById("start");
  const adVideo = document.getElementById("ad");
  const camera = document.getElementById("camera");
  const canvas = document.getElementById("frame-canvas");
  const canvasContext = canvas.getContext("2d");

  const state = {
    seq: 0,
    pending: new Map(), // seq -> ArrayBuffer, until the server acks it
    sent: 0,
    acked: 0,
    rejected: 0,
    socket: null,
    socketClosedForGood: false,
    reconnectDelayMs: 500,
    currentAd: null,
    capturing: false,
    lastMediaTime: 0,
  };

  function setStatus(text) {
    statusLine.textContent = text;
  }

  function publishProgress() {
    // Read by the end-to-end test and handy when debugging a participant's browser.
    document.body.dataset.framesSent = String(state.sent);
    document.body.dataset.framesAcked = String(state.acked);
    document.body.dataset.framesRejected = String(state.rejected);
  }

  function socketUrl() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    return scheme + location.host + config.socketPath;
  }

  function connect() {
    const socket = new WebSocket(socketUrl());
    socket.binaryType = "arraybuffer";
    socket.onopen = () => {
      state.reconnectDelayMs = 500;
      // Resend everything not yet acked; the server stores each (session, seq) once.
      const seqs = [...state.pending.keys()].sort((a, b) => a - b);
      for (const seq of seqs) socket.send(state.pending.get(seq));
    };
    socket.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message.type === "ack") {
        for (const seq of message.seqs) {
          if (state.pending.delete(seq)) state.acked += 1;
        }
      } else if (message.type === "error") {
        console.warn("capture error", message.code, message.detail);
        if (message.seq !== null && state.pending.delete(message.seq)) state.rejected += 1;
      }
      publishProgress();
    };
    socket.onclose = (event) => {
      state.socket = null;
      if (FINAL_CLOSE_CODES.has(event.code)) {
        state.socketClosedForGood = true;
        return;
      }
      setTimeout(connect, state.reconnectDelayMs);
      state.reconnectDelayMs = Math.min(state.reconnectDelayMs * 2, 8000);
    };
    state.socket = socket;
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
    if (!state.capturing || !state.currentAd || camera.readyState < 2) return;
    // Stamp the frame when it is grabbed, not when the JPEG is ready.
    const seq = state.seq++;
    const adId = state.currentAd.id;
    const mediaTimeMs = Math.round(adVideo.currentTime * 1000);
    const captureTimeMs = Date.now();
    canvasContext.drawImage(camera, 0, 0, FRAME_WIDTH, FRAME_HEIGHT);
    canvas.toBlob(async (blob) => {
      if (!blob) return;
      const message = encodeFrame(seq, adId, mediaTimeMs, captureTimeMs, await blob.arrayBuffer());
      if (state.pending.size >= MAX_PENDING_FRAMES) {
        state.pending.delete(state.pending.keys().next().value);
      }
      state.pending.set(seq, message);
      state.sent += 1;
      if (state.socket && state.socket.readyState === WebSocket.OPEN) state.socket.send(message);
      publishProgress();
    }, "image/jpeg", JPEG_QUALITY);
  }

  function playAd(ad) {
    return new Promise((resolve, reject) => {
      state.currentAd = ad;
      state.lastMediaTime = 0;
      adVideo.src = ad.src;
      adVideo.hidden = false;
      adVideo.addEventListener("ended", resolve, { once: true });
      adVideo.addEventListener("error", () => reject(new Error("The video could not be played.")), { once: true });
      adVideo.play().catch(reject);
    });
  }

  // Participants watch the ad as an audience would: no skipping ahead or back.
  adVideo.addEventListener("timeupdate", () => {
    if (!adVideo.seeking) state.lastMediaTime = adVideo.currentTime;
  });
  adVideo.addEventListener("seeking", () => {
    if (Math.abs(adVideo.currentTime - state.lastMediaTime) > 0.5) adVideo.currentTime = state.lastMediaTime;
  });

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  async function waitForAcks() {
    const deadline = Date.now() + ACK_WAIT_MS;
    while (state.pending.size > 0 && !state.socketClosedForGood && Date.now() < deadline) await sleep(200);
  }

  async function finish() {
    setStatus("Saving your session…");
    await waitForAcks();
    if (state.socket && state.socket.readyState === WebSocket.OPEN) {
      state.socket.send(JSON.stringify({ type: "finish" }));
      const deadline = Date.now() + 5000;
      while (!state.socketClosedForGood && Date.now() < deadline) await sleep(100);
    }
    document.getElementById("finish-form").submit();
  }

  async function start() {
    startButton.disabled = true;
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 480 } },
        audio: false,
      });
    } catch (error) {
      setStatus("We could not use your webcam. Please allow camera access and press Start again.");
      startButton.disabled = false;
      return;
    }
    camera.srcObject = stream;
    await camera.play();
    connect();
    startButton.hidden = true;
    setStatus("Thank you — please keep your face in view while the video plays.");
    state.capturing = true;
    const timer = setInterval(grabFrame, 1000 / config.fps);
    try {
      for (const ad of config.ads) await playAd(ad);
    } catch (error) {
      setStatus(error.message);
    } finally {
      state.capturing = false;
      clearInterval(timer);
      adVideo.hidden = true;
      for (const track of stream.getTracks()) track.stop();
    }
    await finish();
  }

  startButton.addEventListener("click", start);
  publishProgress();
})();
