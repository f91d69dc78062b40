//! Calls attached to a media session on this worker, so the control API can reach the task
//! driving them. Bounded by admission (one entry per session slot).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use callworker_call::{Action, Call, CallId, EndReason, Epoch, ResumeCause};
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;

/// A request from the control API to the task driving a call.
#[derive(Debug)]
pub enum Command {
    /// Reply with the current state.
    Snapshot(oneshot::Sender<Call>),
    /// Apply an action and reply with the state after it.
    Action(callworker_call::Action, oneshot::Sender<Result<Call, Error>>),
    /// End the call and reply with the final state.
    End(EndReason, oneshot::Sender<Result<Call, Error>>),
    /// A newer session on this worker took the call over: stop driving it.
    Superseded { epoch: Epoch },
    /// Move the call to another worker: checkpoint it, tell the client to reconnect
    /// elsewhere, and let go (the resume there records `cause`).
    Migrate { cause: ResumeCause },
    /// A Twilio transfer is under way (the call is being redirected to `<Dial>`): until
    /// [`Command::CancelTransfer`], the stream stopping ends the call with `transferred`
    /// rather than `remote_hangup`. Replies with the current state.
    PrepareTransfer(oneshot::Sender<Result<Call, Error>>),
    /// The transfer failed: the stream stopping is a hang-up again.
    CancelTransfer,
}

impl Command {
    pub fn action(action: Action) -> (Command, oneshot::Receiver<Result<Call, Error>>) {
        let (tx, rx) = oneshot::channel();
        (Command::Action(action, tx), rx)
    }
}

#[derive(Debug, Clone)]
struct Entry {
    epoch: Epoch,
    commands: mpsc::Sender<Command>,
    /// Bytes the call holds on this worker (its memory account), kept by its driver.
    account: Arc<AtomicU64>,
}

/// A locally driven call and its memory account, for the governor.
#[derive(Debug, Clone)]
pub struct Accounted {
    pub call_id: CallId,
    pub bytes: u64,
    pub commands: mpsc::Sender<Command>,
}

/// Registry of locally driven calls.
#[derive(Debug, Default)]
pub struct LiveCalls {
    map: Mutex<HashMap<CallId, Entry>>,
}

impl LiveCalls {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CallId, Entry>> {
        // Every critical section is a single map operation; poisoning cannot break it.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers the session holding `epoch`. A session of an older epoch for the same call
    /// is told it has been superseded (it would be fenced on its next write anyway).
    pub fn register(
        &self,
        call_id: &CallId,
        epoch: Epoch,
        commands: mpsc::Sender<Command>,
        account: Arc<AtomicU64>,
    ) {
        let old = self.lock().insert(call_id.clone(), Entry { epoch, commands, account });
        if let Some(old) = old
            && old.epoch < epoch
        {
            // Best effort: if its queue is full it learns from the store instead.
            let _ = old.commands.try_send(Command::Superseded { epoch });
        }
    }

    /// Removes the entry if it still belongs to `epoch`.
    pub fn deregister(&self, call_id: &CallId, epoch: Epoch) {
        let mut map = self.lock();
        if map.get(call_id).is_some_and(|e| e.epoch == epoch) {
            map.remove(call_id);
        }
    }

    /// The command queue of the session driving `call_id` here, if any.
    pub fn get(&self, call_id: &CallId) -> Option<mpsc::Sender<Command>> {
        self.lock().get(call_id).map(|e| e.commands.clone())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Every locally driven call and the epoch it is driven at.
    pub fn epochs(&self) -> Vec<(CallId, Epoch)> {
        self.lock().iter().map(|(id, e)| (id.clone(), e.epoch)).collect()
    }

    /// Every locally driven call (for drain).
    pub fn all(&self) -> Vec<Accounted> {
        self.largest(usize::MAX)
    }

    /// The `n` calls holding the most memory here, largest first.
    pub fn largest(&self, n: usize) -> Vec<Accounted> {
        let mut all: Vec<Accounted> = self
            .lock()
            .iter()
            .map(|(id, e)| Accounted {
                call_id: id.clone(),
                bytes: e.account.load(Ordering::Relaxed),
                commands: e.commands.clone(),
            })
            .collect();
        all.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.call_id.cmp(&b.call_id)));
        all.truncate(n);
        all
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}
