//! The reference voice agent: a small, deterministic server of the callworker agent
//! protocol (`docs/agent-protocol.md`), used by the end-to-end tests and as an example of
//! the agent side.
//!
//! What it does on each connection:
//! - Checks `Authorization: Bearer <token>` when it has a token (401 otherwise).
//! - On a fresh `start`: says hello (a transcript entry, [`tone_reply`] audio, a mark
//!   `greeting`, `end_of_turn`).
//! - Counts caller audio; every `turn_frames` frames are one caller turn `k`: it appends
//!   `caller turn k` and `reply k` to the transcript, plays the caller's audio of that turn
//!   back (echo in turns), marks `reply-k` and ends its turn.
//! - On a resuming `start`: it is stateless, like a horizontally scaled agent, so it
//!   rebuilds the conversation from the transcript in `start`: it continues the turn
//!   numbering after the last `caller turn k` it finds, first finishes `reply k` if the
//!   worker never stored it, then says `welcome back` (transcript, tone, mark). Every entry
//!   carries its `index`, continuing from `transcript_next_index`.
//! - DTMF `#` hangs up, `*` clears, `9` transfers to [`TRANSFER_TARGET`], and `0` sends a
//!   binary message of [`OVERSIZED_BYTES`] (to exercise the worker's message bound).
//!
//! Everything the agent receives is kept in a log ([`ReferenceAgent::seen`]) so tests can
//! check what the worker sent, e.g. that a resumed call's `start` carried the transcript.

use std::sync::{Arc, Mutex};

use callworker_protocol::agent::{
    AGENT_PROTOCOL_VERSION, Frame, FromAgent, Start, ToAgent, TranscriptRole, parse_to_agent,
};
use callworker_protocol::{AudioFormat, codec};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;

/// Caller frames per turn unless configured (half a second).
pub const DEFAULT_TURN_FRAMES: usize = 25;
/// Where DTMF `9` transfers the caller.
pub const TRANSFER_TARGET: &str = "+15550100";
/// Size of the message DTMF `0` sends (above the worker's default 64 KiB bound).
pub const OVERSIZED_BYTES: usize = 70_000;
/// Length of the tone replies (greeting, welcome back), in 20 ms frames.
pub const TONE_REPLY_FRAMES: usize = 5;
/// Connections served at once; more are closed at once.
pub const CONNECTIONS_MAX: usize = 1024;
/// Entries the log keeps; later ones are not recorded (a test tool, not a service).
pub const LOG_MAX: usize = 100_000;
/// The greeting's transcript text.
pub const GREETING: &str = "hello, this is the reference agent";
/// What a resumed conversation says first.
pub const WELCOME_BACK: &str = "welcome back";

/// How the agent behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bearer token the worker must present; `None` accepts any.
    pub token: Option<String>,
    /// Caller frames that make one turn.
    pub turn_frames: usize,
}

/// Something the agent received or did, per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Connection number, from 1.
    pub conn: u64,
    pub event: SeenEvent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeenEvent {
    Start(Box<Start>),
    /// A caller turn was completed and answered.
    Turn(u64),
    Dtmf(char),
    Mark {
        name: String,
        cleared: bool,
    },
    Stop {
        reason: String,
    },
    /// The connection closed, with the worker's close code if it sent one.
    Closed {
        code: Option<u16>,
    },
    /// The `Authorization` header was wrong or missing.
    Unauthorized,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// A running reference agent; stops (with every connection) when dropped.
#[derive(Debug)]
pub struct ReferenceAgent {
    addr: std::net::SocketAddr,
    log: Log,
    task: tokio::task::JoinHandle<()>,
}

impl ReferenceAgent {
    /// Listens on `listen` (e.g. `127.0.0.1:0`) and serves connections in the background.
    pub async fn start(listen: &str, options: Options) -> std::io::Result<ReferenceAgent> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let log: Log = Arc::default();
        let task = tokio::spawn(serve(listener, options, log.clone()));
        Ok(ReferenceAgent { addr, log, task })
    }

    /// The agent's URL, as a call's `url` parameter.
    pub fn url(&self) -> String {
        format!("ws://{}/agent", self.addr)
    }

    /// Everything seen so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every `start` received, in order.
    pub fn starts(&self) -> Vec<Start> {
        self.seen()
            .into_iter()
            .filter_map(|s| match s.event {
                SeenEvent::Start(start) => Some(*start),
                _ => None,
            })
            .collect()
    }
}

impl Drop for ReferenceAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, options: Options, log: Log) {
    let mut connections = JoinSet::new();
    let mut next_conn = 0u64;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                if connections.len() >= CONNECTIONS_MAX {
                    drop(stream);
                    continue;
                }
                next_conn += 1;
                connections.spawn(connection(stream, next_conn, options.clone(), log.clone()));
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

fn record(log: &Log, conn: u64, event: SeenEvent) {
    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
    if log.len() < LOG_MAX {
        log.push(Seen { conn, event });
    }
}

async fn connection(stream: TcpStream, conn: u64, options: Options, log: Log) {
    let expected = options.token.clone().map(|t| format!("Bearer {t}"));
    let mut authorized = true;
    // The callback's signature (and its large error type) is tungstenite's.
    #[allow(clippy::result_large_err)]
    let check = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        let given = request.headers().get("authorization").and_then(|v| v.to_str().ok());
        match &expected {
            Some(want) if given != Some(want.as_str()) => {
                authorized = false;
                let mut refusal = ErrorResponse::new(Some("unauthorized".to_owned()));
                *refusal.status_mut() = StatusCode::UNAUTHORIZED;
                Err(refusal)
            }
            _ => Ok(response),
        }
    };
    let accepted = tokio_tungstenite::accept_hdr_async(stream, check).await;
    if !authorized {
        record(&log, conn, SeenEvent::Unauthorized);
    }
    let Ok(ws) = accepted else { return };
    let mut session = Session {
        ws,
        conn,
        log,
        options,
        audio: AudioFormat::TWILIO,
        turn: 0,
        next_index: 0,
        heard: Vec::new(),
    };
    let code = session.run().await;
    record(&session.log, conn, SeenEvent::Closed { code });
}

/// One connection's conversation.
struct Session {
    ws: WebSocketStream<TcpStream>,
    conn: u64,
    log: Log,
    options: Options,
    audio: AudioFormat,
    /// The last caller turn answered.
    turn: u64,
    /// The transcript index of the next entry.
    next_index: u64,
    /// Caller audio of the turn in progress.
    heard: Vec<u8>,
}

impl Session {
    /// Runs until the worker closes; returns its close code.
    async fn run(&mut self) -> Option<u16> {
        loop {
            let msg = match self.ws.next().await {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(Message::Text(text))) => parse_to_agent(Frame::Text(text.as_str().to_owned())),
                Some(Ok(Message::Binary(audio))) => Ok(ToAgent::Audio(audio.to_vec())),
                Some(Ok(_)) => continue,
            };
            let Ok(msg) = msg else { return None };
            if self.on_message(msg).await.is_err() {
                return None;
            }
        }
    }

    async fn on_message(&mut self, msg: ToAgent) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        match msg {
            ToAgent::Start(start) => {
                record(&self.log, self.conn, SeenEvent::Start(start.clone()));
                if start.version != AGENT_PROTOCOL_VERSION {
                    return self.ws.close(None).await;
                }
                self.audio = start.audio;
                self.next_index = start.transcript_next_index;
                if start.resume {
                    self.resume(&start).await?;
                } else {
                    self.say(TranscriptRole::Agent, GREETING).await?;
                    self.play(tone_reply(self.audio)).await?;
                    self.send(FromAgent::Mark { name: "greeting".into() }).await?;
                    self.send(FromAgent::EndOfTurn {}).await?;
                }
            }
            ToAgent::Audio(audio) => {
                self.heard.extend_from_slice(&audio);
                let turn_bytes = self.options.turn_frames.max(1) * frame_bytes(self.audio);
                if self.heard.len() >= turn_bytes {
                    let turn: Vec<u8> = self.heard.drain(..turn_bytes).collect();
                    self.turn += 1;
                    let k = self.turn;
                    self.say(TranscriptRole::Caller, &format!("caller turn {k}")).await?;
                    self.say(TranscriptRole::Agent, &format!("reply {k}")).await?;
                    self.play(turn).await?;
                    self.send(FromAgent::Mark { name: format!("reply-{k}") }).await?;
                    self.send(FromAgent::EndOfTurn {}).await?;
                    record(&self.log, self.conn, SeenEvent::Turn(k));
                }
            }
            ToAgent::Dtmf { digit } => {
                record(&self.log, self.conn, SeenEvent::Dtmf(digit));
                match digit {
                    '#' => self.send(FromAgent::Hangup { reason: Some("caller pressed #".into()) }).await?,
                    '*' => self.send(FromAgent::Clear {}).await?,
                    '9' => self.send(FromAgent::Transfer { target: TRANSFER_TARGET.into() }).await?,
                    '0' => self.ws.send(Message::binary(vec![0u8; OVERSIZED_BYTES])).await?,
                    _ => {}
                }
            }
            ToAgent::Mark { name, cleared } => {
                record(&self.log, self.conn, SeenEvent::Mark { name, cleared })
            }
            ToAgent::Stop { reason } => record(&self.log, self.conn, SeenEvent::Stop { reason }),
        }
        Ok(())
    }

    /// Continues a conversation from the transcript the worker kept.
    async fn resume(&mut self, start: &Start) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        let turn_of =
            |prefix: &str, text: &str| text.strip_prefix(prefix).and_then(|n| n.parse::<u64>().ok());
        let last_caller =
            start.transcript.iter().filter_map(|l| turn_of("caller turn ", &l.text)).max().unwrap_or(0);
        let last_reply =
            start.transcript.iter().filter_map(|l| turn_of("reply ", &l.text)).max().unwrap_or(0);
        self.turn = last_caller;
        if last_caller > last_reply {
            // The worker died before it stored the reply: finish the turn.
            self.say(TranscriptRole::Agent, &format!("reply {last_caller}")).await?;
            self.send(FromAgent::EndOfTurn {}).await?;
        }
        self.say(TranscriptRole::Agent, WELCOME_BACK).await?;
        self.play(tone_reply(self.audio)).await?;
        self.send(FromAgent::Mark { name: format!("welcome-back-{}", self.conn) }).await
    }

    async fn say(
        &mut self,
        role: TranscriptRole,
        text: &str,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        let index = Some(self.next_index);
        self.next_index += 1;
        self.send(FromAgent::Transcript { index, role, text: text.to_owned() }).await
    }

    async fn play(&mut self, audio: Vec<u8>) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(Message::binary(audio)).await
    }

    async fn send(&mut self, msg: FromAgent) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(Message::text(msg.encode())).await
    }
}

/// Bytes of one 20 ms frame in `audio`.
pub fn frame_bytes(audio: AudioFormat) -> usize {
    audio.bytes_for_ms(20)
}

/// The agent's tone reply: [`TONE_REPLY_FRAMES`] frames of a 440 Hz tone in `audio`.
pub fn tone_reply(audio: AudioFormat) -> Vec<u8> {
    let samples = TONE_REPLY_FRAMES * audio.sample_rate_hz as usize / 50;
    let rate = f64::from(audio.sample_rate_hz);
    let pcm: Vec<i16> = (0..samples)
        .map(|i| ((i as f64 * 440.0 * std::f64::consts::TAU / rate).sin() * 8_000.0) as i16)
        .collect();
    let mut out = Vec::with_capacity(samples * 2);
    codec::encode(audio.encoding, &pcm, &mut out);
    out
}
