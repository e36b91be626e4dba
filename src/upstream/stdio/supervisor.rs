//! Supervision: the state the handles share with the supervising task, which watches the
//! child, restarts it with backoff when it exits, and stops it when asked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::watch;

use super::child::Running;
use super::config::StdioConfig;
use super::conn::Conn;
use super::error::StdioError;
use super::framing::log;

/// A child that stayed up this long (or the maximum backoff, if longer) resets the backoff.
const STABLE_UPTIME: Duration = Duration::from_secs(30);

/// State shared by the handles and the supervising task.
pub(super) struct Shared {
    pub(super) config: StdioConfig,
    pub(super) label: String,
    pub(super) next_id: AtomicU64,
    pub(super) restarts: AtomicU64,
    pub(super) status: Mutex<Status>,
}

pub(super) enum Status {
    Up { conn: Arc<Conn>, init: Arc<Value> },
    Down,
    Stopped,
}

impl Shared {
    pub(super) fn ready(&self) -> Result<(Arc<Conn>, Arc<Value>), StdioError> {
        match &*self.status.lock() {
            // A child whose stdout closed is down, even before the supervisor notices.
            Status::Up { conn, .. } if conn.is_dead() => Err(StdioError::Unavailable),
            Status::Up { conn, init } => Ok((conn.clone(), init.clone())),
            Status::Down => Err(StdioError::Unavailable),
            Status::Stopped => Err(StdioError::ShutDown),
        }
    }

    /// Publishes a started child; false when the upstream was stopped meanwhile.
    pub(super) fn set_up(&self, running: &Running) -> bool {
        let mut status = self.status.lock();
        if matches!(*status, Status::Stopped) {
            return false;
        }
        *status = Status::Up {
            conn: running.conn.clone(),
            init: running.init.clone(),
        };
        true
    }

    fn set_down(&self) {
        let mut status = self.status.lock();
        if !matches!(*status, Status::Stopped) {
            *status = Status::Down;
        }
    }

    pub(super) fn set_stopped(&self) {
        *self.status.lock() = Status::Stopped;
    }

    /// Upstream lifecycle (start failures, crashes, restarts): a tracing event, and with
    /// `forward_stderr` also a line on stderr as before.
    pub(super) fn note(&self, text: &str) {
        tracing::warn!(upstream = %self.label, "{text}");
        if self.config.forward_stderr {
            log(&self.label, text);
        }
    }
}

/// Waits until a stop is asked for or the last handle is gone.
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Watches the child, restarts it when it exits, and stops it when asked.
/// With no child yet (`first` is `None`: the first start failed) it starts at the restart
/// loop, so a server that is down at start-up is retried like one that crashed.
pub(super) async fn supervise(
    shared: Arc<Shared>,
    first: Option<Running>,
    mut stop: watch::Receiver<bool>,
    done: watch::Sender<bool>,
) {
    let min = shared.config.restart_min_backoff;
    let max = shared.config.restart_max_backoff;
    let stable = STABLE_UPTIME.max(max);
    let grace = shared.config.shutdown_grace;
    let mut backoff = min;
    let mut pending = first;
    'child: loop {
        let Some(mut running) = pending.take() else {
            // Nothing running: straight to the restart loop below.
            match restart(&shared, &mut backoff, max, grace, &mut stop).await {
                Some(next) => {
                    pending = Some(next);
                    continue 'child;
                }
                None => break 'child,
            }
        };
        let ended = tokio::select! {
            status = running.child.wait() => match status {
                Ok(status) => format!("exited ({status})"),
                Err(e) => format!("could not be watched ({e})"),
            },
            _ = &mut running.tasks.reader => "closed its stdout".to_string(),
            _ = &mut running.tasks.writer => "stopped reading its stdin".to_string(),
            _ = stop_requested(&mut stop) => {
                shared.set_stopped();
                running.stop(grace).await;
                break 'child;
            }
        };
        // Whatever ended it, the child is of no more use: make sure it is gone and reaped.
        shared.set_down();
        running.kill().await;
        running.conn.fail_all();
        let uptime = running.started.elapsed();
        drop(running);
        if uptime >= stable {
            backoff = min;
        }
        shared.note(&format!("{ended}; restarting"));
        match restart(&shared, &mut backoff, max, grace, &mut stop).await {
            Some(next) => pending = Some(next),
            None => break 'child,
        }
    }
    done.send_replace(true);
}

/// Starts a new child after the backoff, doubling it after each failure; `None` when the
/// upstream is stopped meanwhile.
async fn restart(
    shared: &Arc<Shared>,
    backoff: &mut Duration,
    max: Duration,
    grace: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Option<Running> {
    loop {
        let delay = *backoff;
        *backoff = backoff.saturating_mul(2).min(max);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop_requested(stop) => {
                shared.set_stopped();
                return None;
            }
        }
        let started = tokio::select! {
            started = shared.start_child() => started,
            _ = stop_requested(stop) => {
                shared.set_stopped();
                return None;
            }
        };
        match started {
            Ok(next) => {
                if !shared.set_up(&next) {
                    next.stop(grace).await;
                    return None;
                }
                shared.restarts.fetch_add(1, Ordering::Relaxed);
                return Some(next);
            }
            Err(e) => shared.note(&format!("restart failed: {e}")),
        }
    }
}
