// Two RTCPeerConnections in one page, both forced through the TURN server (relay only):
// a DataChannel echo, a bulk transfer on a second DataChannel and, when asked, a video
// track.  Evaluated by
// tests/interop/test_browser_webrtc.py with page.evaluate(source, opts); resolves to a
// summary of what happened, or rejects with the step that failed and the event log.
async (opts) => {
  const log = [];
  const note = (what) => log.push(`${(performance.now() / 1000).toFixed(3)} ${what}`);
  const within = (ms, what, promise) => Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), ms)),
  ]);
  const until = async (ms, what, check) => {
    const end = performance.now() + ms;
    for (;;) {
      const v = await check();
      if (v) return v;
      if (performance.now() > end) throw new Error(`timed out: ${what}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const config = { iceServers: opts.iceServers, iceTransportPolicy: "relay" };
  const a = new RTCPeerConnection(config);
  const b = new RTCPeerConnection(config);
  const candidates = { a: [], b: [] };
  const wire = (from, to, name) => {
    from.onicecandidate = (e) => {
      if (!e.candidate) return;
      candidates[name].push(e.candidate.candidate);
      to.addIceCandidate(e.candidate).catch((err) => note(`${name} addIceCandidate: ${err}`));
    };
    from.onicecandidateerror = (e) =>
      note(`${name} candidate error ${e.errorCode} ${e.errorText} ${e.url}`);
    from.oniceconnectionstatechange = () => note(`${name} ice ${from.iceConnectionState}`);
    from.onconnectionstatechange = () => note(`${name} conn ${from.connectionState}`);
  };
  wire(a, b, "a");
  wire(b, a, "b");

  const summary = { log, candidates, video: null };
  try {
    let source = null;
    if (opts.video) {
      let stream;
      if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
        stream = await within(opts.stepMs, "getUserMedia",
          navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240 } }));
        source = "fake camera";
      } else {  // no secure context: an animated canvas is a video track as well
        const canvas = document.createElement("canvas");
        canvas.width = 320; canvas.height = 240;
        const ctx = canvas.getContext("2d");
        let frame = 0;
        setInterval(() => {
          ctx.fillStyle = `hsl(${(frame++ * 7) % 360} 80% 50%)`;
          ctx.fillRect(0, 0, 320, 240);
        }, 40);
        stream = canvas.captureStream(25);
        source = "canvas";
      }
      for (const track of stream.getTracks()) a.addTrack(track, stream);
    }

    const received = [];
    const echoes = [];
    let bulkReceived = 0;
    b.ondatachannel = (e) => {
      const ch = e.channel;
      if (ch.label === "bulk") {
        ch.binaryType = "arraybuffer";
        ch.onmessage = (m) => { bulkReceived += m.data.byteLength; };
      } else {
        ch.onmessage = (m) => { received.push(m.data); ch.send(`echo:${m.data}`); };
      }
    };
    const dc = a.createDataChannel("echo", { ordered: true });
    dc.onmessage = (m) => echoes.push(m.data);
    const opened = new Promise((resolve) => { dc.onopen = resolve; });

    const offer = await a.createOffer();
    await a.setLocalDescription(offer);
    await b.setRemoteDescription(offer);
    const answer = await b.createAnswer();
    await b.setLocalDescription(answer);
    await a.setRemoteDescription(answer);
    note("offer/answer exchanged");

    await within(opts.stepMs, "DataChannel open", opened);
    note("DataChannel open");
    for (let i = 0; i < opts.messages; i++) dc.send(`msg-${i}`);
    await until(opts.stepMs, `${opts.messages} echoes`, () => echoes.length >= opts.messages);
    note(`${echoes.length} echoes back`);
    summary.received = received;
    summary.echoes = echoes;

    // Bulk: SCTP's congestion control against relay's forwarding loops, window-limited.
    const bulk = a.createDataChannel("bulk", { ordered: true });
    await within(opts.stepMs, "bulk DataChannel open",
      new Promise((resolve) => { bulk.onopen = resolve; }));
    const chunk = new Uint8Array(16384);
    const t0 = performance.now();
    bulk.bufferedAmountLowThreshold = 256 * 1024;
    for (let sent = 0; sent < opts.bulkBytes; sent += chunk.length) {
      if (bulk.bufferedAmount > 1024 * 1024) {
        await new Promise((resolve) => { bulk.onbufferedamountlow = resolve; });
      }
      bulk.send(chunk);
    }
    await until(opts.stepMs, `${opts.bulkBytes} bulk bytes`,
      () => bulkReceived >= opts.bulkBytes);
    summary.bulk = { bytes: bulkReceived, ms: Math.round(performance.now() - t0) };
    note(`bulk: ${bulkReceived} bytes in ${summary.bulk.ms} ms`);

    if (opts.video) {
      const inbound = async () => {
        for (const s of (await b.getStats()).values()) {
          if (s.type === "inbound-rtp" && s.kind === "video") return s;
        }
        return null;
      };
      const s = await until(opts.stepMs, "video frames decoded", async () => {
        const r = await inbound();
        return r && r.bytesReceived > opts.minVideoBytes && r.framesDecoded > 0 ? r : null;
      });
      summary.video = {
        source, bytesReceived: s.bytesReceived, packetsReceived: s.packetsReceived,
        framesDecoded: s.framesDecoded,
      };
      note(`video: ${s.bytesReceived} bytes, ${s.framesDecoded} frames`);
    }

    const selected = async (pc) => {
      const stats = await pc.getStats();
      let pair = null;
      for (const s of stats.values()) {
        if (s.type === "transport" && s.selectedCandidatePairId) {
          pair = stats.get(s.selectedCandidatePairId);
        }
      }
      if (!pair) return null;
      const local = stats.get(pair.localCandidateId);
      const remote = stats.get(pair.remoteCandidateId);
      return {
        state: pair.state,
        bytesSent: pair.bytesSent,
        bytesReceived: pair.bytesReceived,
        local: { type: local.candidateType, relayProtocol: local.relayProtocol,
          address: local.address, port: local.port, url: local.url },
        remote: { type: remote.candidateType, address: remote.address, port: remote.port },
      };
    };
    summary.pairs = { a: await selected(a), b: await selected(b) };
    return summary;
  } catch (err) {
    throw new Error(`${err.message}\n${JSON.stringify(summary, null, 1)}`);
  } finally {
    a.close();
    b.close();
  }
}
