//! A Twilio Media Streams simulator that behaves as Twilio does.
//!
//! [`TwilioSimulator::place_call`] POSTs the voice webhook like Twilio (form-encoded
//! `CallSid`, `AccountSid`, `From`, `To`, `Direction`), reads the TwiML, and opens the
//! `<Stream>` it names with the `<Parameter>`s as `customParameters`. The stream's task
//! numbers every message it sends (`start` is 1), "plays" received audio on a real clock
//! (8 bytes per millisecond of μ-law), and echoes each `mark` once the audio queued before it
//! has played — or at once when a `clear` discards that audio, as Twilio does.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use callworker_protocol::twilio::{
    self, Connected, Dtmf, FromTwilio, Mark, Media, MediaFormat, Start, Stop, ToTwilio, Track,
    encode_from_twilio, parse_to_twilio,
};
use futures_util::{SinkExt, StreamExt};
use quick_xml::Reader;
use quick_xml::events::Event;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::ClientError;

/// Commands queued to a stream's task; senders wait when it is full.
const COMMANDS_MAX: usize = 256;
/// Events queued for the test or load generator; the task waits when it is full (which
/// back-pressures the socket, as a slow Twilio would).
const EVENTS_MAX: usize = 4096;
/// Marks waiting for their audio to play; beyond it the stream reports a protocol error.
const PENDING_MARKS_MAX: usize = 4096;

/// What the voice webhook answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Twiml {
    /// `<Connect action><Stream url><Parameter …/></Stream></Connect>`.
    Connect { action: Option<String>, stream_url: String, parameters: BTreeMap<String, String> },
    /// `<Hangup/>`.
    Hangup,
}

/// Parses the subset of TwiML callworker answers.
pub fn parse_twiml(xml: &str) -> Result<Twiml, ClientError> {
    let mut reader = Reader::from_str(xml);
    let mut action = None;
    let mut stream_url = None;
    let mut parameters = BTreeMap::new();
    let attr = |e: &quick_xml::events::BytesStart<'_>, name: &[u8]| -> Result<Option<String>, ClientError> {
        for a in e.attributes() {
            let a = a.map_err(|e| ClientError::Protocol(format!("TwiML attribute: {e}")))?;
            if a.key.as_ref() == name {
                let v = a.unescape_value().map_err(|e| ClientError::Protocol(format!("TwiML value: {e}")))?;
                return Ok(Some(v.into_owned()));
            }
        }
        Ok(None)
    };
    loop {
        match reader.read_event() {
            Ok(Event::Start(e) | Event::Empty(e)) => match e.name().as_ref() {
                b"Hangup" => return Ok(Twiml::Hangup),
                b"Connect" => action = attr(&e, b"action")?,
                b"Stream" => stream_url = attr(&e, b"url")?,
                b"Parameter" => {
                    if let (Some(n), Some(v)) = (attr(&e, b"name")?, attr(&e, b"value")?) {
                        parameters.insert(n, v);
                    }
                }
                _ => {}
            },
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => return Err(ClientError::Protocol(format!("TwiML: {e}"))),
        }
    }
    let stream_url = stream_url.ok_or_else(|| ClientError::Protocol("TwiML has no <Stream url>".into()))?;
    Ok(Twiml::Connect { action, stream_url, parameters })
}

/// Places calls against one callworker (or load balancer) base URL.
#[derive(Debug, Clone)]
pub struct TwilioSimulator {
    base_url: String,
    http: reqwest::Client,
    account_sid: String,
    /// Signs every webhook and stream upgrade (`X-Twilio-Signature`) as Twilio does; `None`
    /// sends no signature.
    auth_token: Option<String>,
}

impl TwilioSimulator {
    pub fn new(base_url: &str) -> TwilioSimulator {
        TwilioSimulator {
            base_url: base_url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            account_sid: "AC00000000000000000000000000000000".to_owned(),
            auth_token: None,
        }
    }

    /// Signs requests with the account's auth token (the worker's `twilio.auth_token`).
    pub fn with_auth_token(mut self, auth_token: &str) -> TwilioSimulator {
        self.auth_token = Some(auth_token.to_owned());
        self
    }

    /// The WebSocket upgrade request for `stream_url`, signed when an auth token is set
    /// (Twilio signs the upgrade over the stream URL with no parameters).
    pub fn upgrade_request(
        &self,
        stream_url: &str,
    ) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request, ClientError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = stream_url.into_client_request()?;
        if let Some(token) = &self.auth_token {
            let signature = callworker_protocol::twilio_signature::sign(token.as_bytes(), stream_url, &[]);
            let value = signature
                .parse()
                .map_err(|_| ClientError::Protocol("signature is not a header value".into()))?;
            request.headers_mut().insert("X-Twilio-Signature", value);
        }
        Ok(request)
    }

    /// A bare (signed) socket to a Twilio media URL with nothing sent yet, for tests that
    /// send malformed messages.
    pub async fn connect_raw(
        &self,
        stream_url: &str,
    ) -> Result<(crate::native::NativeSender, crate::native::NativeReceiver), ClientError> {
        crate::native::connect_raw(self.upgrade_request(stream_url)?).await
    }

    /// A form POST to `url`, signed when an auth token is set.
    async fn post_form(&self, url: &str, form: &[(&str, &str)]) -> Result<reqwest::Response, ClientError> {
        let mut request = self.http.post(url).form(form);
        if let Some(token) = &self.auth_token {
            let params: Vec<(String, String)> =
                form.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            let signature = callworker_protocol::twilio_signature::sign(token.as_bytes(), url, &params);
            request = request.header("X-Twilio-Signature", signature);
        }
        Ok(request.send().await?)
    }

    fn sid(prefix: &str) -> String {
        format!("{prefix}{:032x}", rand::random::<u128>())
    }

    /// Runs the voice webhook for a new inbound call and returns its TwiML.
    pub async fn voice_webhook(&self, call_sid: &str, from: &str, to: &str) -> Result<Twiml, ClientError> {
        let form = [
            ("CallSid", call_sid),
            ("AccountSid", self.account_sid.as_str()),
            ("From", from),
            ("To", to),
            ("Direction", "inbound"),
            ("CallStatus", "in-progress"),
        ];
        let response = self.post_form(&format!("{}/twilio/voice", self.base_url), &form).await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        if status != 200 {
            return Err(ClientError::Api { status, code: "voice_webhook".into(), message: text });
        }
        parse_twiml(&text)
    }

    /// Requests a `<Connect action>` URL as Twilio does when a stream ends.
    pub async fn stream_ended(&self, action: &str, call_sid: &str) -> Result<Twiml, ClientError> {
        let form =
            [("CallSid", call_sid), ("AccountSid", self.account_sid.as_str()), ("CallStatus", "in-progress")];
        let response = self.post_form(action, &form).await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        if status != 200 {
            return Err(ClientError::Api { status, code: "stream_ended".into(), message: text });
        }
        parse_twiml(&text)
    }

    /// Places a call: voice webhook, then the stream its TwiML names.
    pub async fn place_call(&self, from: &str, to: &str) -> Result<TwilioStream, ClientError> {
        let call_sid = Self::sid("CA");
        match self.voice_webhook(&call_sid, from, to).await? {
            Twiml::Connect { action, stream_url, parameters } => {
                let mut stream = self.open_stream(&stream_url, &call_sid, parameters).await?;
                stream.action = action;
                Ok(stream)
            }
            Twiml::Hangup => Err(ClientError::Protocol("voice webhook answered <Hangup/>".into())),
        }
    }

    /// Opens a stream and sends `connected` and `start` (with `parameters`).
    pub async fn open_stream(
        &self,
        stream_url: &str,
        call_sid: &str,
        parameters: BTreeMap<String, String>,
    ) -> Result<TwilioStream, ClientError> {
        let request = self.upgrade_request(stream_url)?;
        let (ws, _) =
            tokio_tungstenite::connect_async_with_config(request, Some(crate::native::ws_config()), true)
                .await?;
        let stream_sid = Self::sid("MZ");
        let (commands_tx, commands_rx) = mpsc::channel(COMMANDS_MAX);
        let (events_tx, events_rx) = mpsc::channel(EVENTS_MAX);
        let start = Start {
            sequence_number: 1,
            stream_sid: stream_sid.clone(),
            account_sid: self.account_sid.clone(),
            call_sid: call_sid.to_owned(),
            tracks: vec![Track::Inbound],
            custom_parameters: parameters,
            media_format: MediaFormat {
                encoding: "audio/x-mulaw".into(),
                sample_rate_hz: 8_000,
                channels: 1,
            },
        };
        let task = StreamTask {
            stream_sid: stream_sid.clone(),
            account_sid: self.account_sid.clone(),
            call_sid: call_sid.to_owned(),
            next_sequence: 2,
            next_chunk: 1,
            play_until: Instant::now(),
            pending_marks: VecDeque::new(),
            events: events_tx,
        };
        tokio::spawn(task.run(ws, start, commands_rx));
        Ok(TwilioStream {
            stream_sid,
            call_sid: call_sid.to_owned(),
            action: None,
            commands: commands_tx,
            events: events_rx,
        })
    }
}

/// What a stream observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// Audio the server sent (μ-law), as received.
    Media(Vec<u8>),
    /// A mark was echoed back to the server after its audio played.
    MarkPlayed(String),
    /// The server sent `clear`.
    Clear,
    /// The socket closed (1006 when it vanished without a close frame).
    Closed { code: u16, reason: String },
}

/// Commands to a stream's task.
#[derive(Debug)]
enum Command {
    Media(Vec<u8>),
    Dtmf(char),
    Stop,
    /// Send arbitrary text as is (tests of malformed input).
    Raw(Message),
    /// Drop the TCP connection without a close frame.
    Abort,
}

/// One simulated Twilio stream.
#[derive(Debug)]
pub struct TwilioStream {
    pub stream_sid: String,
    pub call_sid: String,
    /// The `<Connect action>` URL from the TwiML, if any.
    pub action: Option<String>,
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<StreamEvent>,
}

impl TwilioStream {
    async fn command(&self, c: Command) -> Result<(), ClientError> {
        self.commands
            .send(c)
            .await
            .map_err(|_| ClientError::Closed { code: 1006, reason: "stream task ended".into() })
    }

    /// Sends one chunk of caller audio (μ-law), numbered and timestamped as Twilio does.
    pub async fn send_media(&self, payload: Vec<u8>) -> Result<(), ClientError> {
        self.command(Command::Media(payload)).await
    }

    pub async fn send_dtmf(&self, digit: char) -> Result<(), ClientError> {
        self.command(Command::Dtmf(digit)).await
    }

    /// The caller hung up: `stop`, then close.
    pub async fn stop(&self) -> Result<(), ClientError> {
        self.command(Command::Stop).await
    }

    pub async fn send_raw(&self, msg: Message) -> Result<(), ClientError> {
        self.command(Command::Raw(msg)).await
    }

    /// Drops the connection without a close frame.
    pub async fn abort(&self) -> Result<(), ClientError> {
        self.command(Command::Abort).await
    }

    /// The next event, or `None` once the stream's task has ended.
    pub async fn next_event(&mut self) -> Option<StreamEvent> {
        self.events.recv().await
    }

    /// Waits (bounded) for the close, skipping other events.
    pub async fn closed(&mut self, timeout: Duration) -> Result<(u16, String), ClientError> {
        tokio::time::timeout(timeout, async {
            while let Some(e) = self.next_event().await {
                if let StreamEvent::Closed { code, reason } = e {
                    return Ok((code, reason));
                }
            }
            Err(ClientError::Protocol("stream ended without close".into()))
        })
        .await
        .map_err(|_| ClientError::Timeout("waiting for stream close"))?
    }
}

struct StreamTask {
    stream_sid: String,
    account_sid: String,
    call_sid: String,
    next_sequence: u64,
    next_chunk: u64,
    /// When the audio received so far will have finished playing.
    play_until: Instant,
    /// Marks waiting for their audio, with the instant it finishes playing.
    pending_marks: VecDeque<(Instant, String)>,
    events: mpsc::Sender<StreamEvent>,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl StreamTask {
    fn seq(&mut self) -> u64 {
        let s = self.next_sequence;
        self.next_sequence += 1;
        s
    }

    fn text(msg: &FromTwilio) -> Message {
        let mut s = String::new();
        encode_from_twilio(msg, &mut s);
        Message::Text(s.into())
    }

    async fn run(mut self, ws: Ws, start: Start, mut commands: mpsc::Receiver<Command>) {
        let (mut sink, mut stream) = ws.split();
        let connected = FromTwilio::Connected(Connected { protocol: "Call".into(), version: "1.0.0".into() });
        let opened = async {
            sink.send(Self::text(&connected)).await?;
            sink.send(Self::text(&FromTwilio::Start(start))).await
        }
        .await;
        if opened.is_err() {
            let _ =
                self.events.send(StreamEvent::Closed { code: 1006, reason: "connect failed".into() }).await;
            return;
        }
        let started = Instant::now();
        let limits = twilio::Limits::default();
        let mark_timer = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(mark_timer);
        loop {
            if let Some((due, _)) = self.pending_marks.front() {
                mark_timer.as_mut().reset(*due);
            }
            tokio::select! {
                cmd = commands.recv() => {
                    let msg = match cmd {
                        None => break,
                        Some(Command::Abort) => return, // dropping the socket without a close
                        Some(Command::Raw(m)) => m,
                        Some(Command::Media(payload)) => {
                            let chunk = self.next_chunk;
                            self.next_chunk += 1;
                            let sequence_number = self.seq();
                            Self::text(&FromTwilio::Media(Media {
                                sequence_number,
                                stream_sid: self.stream_sid.clone(),
                                track: Track::Inbound,
                                chunk,
                                timestamp_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                                payload,
                            }))
                        }
                        Some(Command::Dtmf(digit)) => {
                            let sequence_number = self.seq();
                            Self::text(&FromTwilio::Dtmf(Dtmf { sequence_number, stream_sid: self.stream_sid.clone(), track: Track::Inbound, digit }))
                        }
                        Some(Command::Stop) => {
                            let sequence_number = self.seq();
                            Self::text(&FromTwilio::Stop(Stop {
                                sequence_number,
                                stream_sid: self.stream_sid.clone(),
                                account_sid: self.account_sid.clone(),
                                call_sid: self.call_sid.clone(),
                            }))
                        }
                    };
                    if sink.send(msg).await.is_err() {
                        break;
                    }
                }
                msg = stream.next() => {
                    match msg {
                        Some(Ok(Message::Text(t))) => {
                            if !self.on_server_text(&t, &limits, &mut sink).await {
                                break;
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            let (code, reason) = frame.map_or((1005, String::new()), |f| (f.code.into(), f.reason.to_string()));
                            let _ = self.events.send(StreamEvent::Closed { code, reason }).await;
                            return;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    }
                }
                _ = &mut mark_timer, if !self.pending_marks.is_empty() => {
                    if !self.echo_due_marks(&mut sink, Instant::now()).await {
                        break;
                    }
                }
            }
        }
        let _ = self.events.send(StreamEvent::Closed { code: 1006, reason: "connection lost".into() }).await;
    }

    /// Handles one server message; false when the stream must stop.
    async fn on_server_text(
        &mut self,
        text: &str,
        limits: &twilio::Limits,
        sink: &mut futures_util::stream::SplitSink<Ws, Message>,
    ) -> bool {
        match parse_to_twilio(text, limits) {
            Ok(ToTwilio::Media { payload, .. }) => {
                let now = Instant::now();
                let play_ms = payload.len() as u64 / 8;
                self.play_until = self.play_until.max(now) + Duration::from_millis(play_ms);
                self.events.send(StreamEvent::Media(payload)).await.is_ok()
            }
            Ok(ToTwilio::Mark { name, .. }) => {
                if self.pending_marks.len() >= PENDING_MARKS_MAX {
                    return false;
                }
                self.pending_marks.push_back((self.play_until, name));
                true
            }
            Ok(ToTwilio::Clear { .. }) => {
                // Buffered audio is discarded; its marks are answered at once.
                let now = Instant::now();
                self.play_until = now;
                for mark in self.pending_marks.iter_mut() {
                    mark.0 = now;
                }
                self.echo_due_marks(sink, now).await && self.events.send(StreamEvent::Clear).await.is_ok()
            }
            Err(_) => true, // a real Twilio ignores what it cannot parse (and logs an error)
        }
    }

    async fn echo_due_marks(
        &mut self,
        sink: &mut futures_util::stream::SplitSink<Ws, Message>,
        now: Instant,
    ) -> bool {
        while self.pending_marks.front().is_some_and(|(due, _)| *due <= now) {
            let Some((_, name)) = self.pending_marks.pop_front() else { break };
            let sequence_number = self.seq();
            let msg = Self::text(&FromTwilio::Mark(Mark {
                sequence_number,
                stream_sid: self.stream_sid.clone(),
                name: name.clone(),
            }));
            if sink.send(msg).await.is_err() || self.events.send(StreamEvent::MarkPlayed(name)).await.is_err()
            {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connect_and_hangup_twiml() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<Response><Connect action="http://h/twilio/stream-ended?call_id=c1&amp;x=1"><Stream url="ws://h/twilio/media"><Parameter name="call_id" value="c1"/><Parameter name="epoch" value="0"/></Stream></Connect></Response>"#;
        match parse_twiml(xml).unwrap() {
            Twiml::Connect { action, stream_url, parameters } => {
                assert_eq!(action.as_deref(), Some("http://h/twilio/stream-ended?call_id=c1&x=1"));
                assert_eq!(stream_url, "ws://h/twilio/media");
                assert_eq!(parameters.get("call_id").map(String::as_str), Some("c1"));
                assert_eq!(parameters.get("epoch").map(String::as_str), Some("0"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_twiml("<Response><Hangup/></Response>").unwrap(), Twiml::Hangup);
        assert!(parse_twiml("<Response></Response>").is_err());
    }
}
