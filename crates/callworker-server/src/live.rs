//! Calls attached to a media session on this worker, so the control API can reach the task
//! driving them. Bounded by admission (one entry per session slot).

use std::collections::HashMap;
use std::sync::Mutex;

use callworker_call::{Action, Call, CallId, EndReason, Epoch};
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
    pub fn register(&self, call_id: &CallId, epoch: Epoch, commands: mpsc::Sender<Command>) {
        let old = self.lock().insert(call_id.clone(), Entry { epoch, commands });
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

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}
