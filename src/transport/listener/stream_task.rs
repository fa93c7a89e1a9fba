//! The task of each HTTP/2 stream, and how its handler can end it.
//!
//! hyper runs every stream (the handler, then the piping of its response body into h2) as a
//! task it spawns through the connection's executor. While the client keeps the stream's
//! flow-control window closed, hyper holds the body's next chunk, waits for window and polls
//! the body no more: a body cannot end itself then, and what it and h2 hold stays until the
//! connection closes. This executor gives each stream task a [`StreamReset`] (the listener
//! puts it in the request's extensions); firing it ends the task, which drops the body and the
//! chunk, and h2, seeing the stream's last handle dropped while it is still open, resets it
//! (RST_STREAM CANCEL) and discards the data it had queued for it.

use std::{future::Future, sync::Arc};

use tokio::sync::Notify;

tokio::task_local! {
    static STREAM: StreamReset;
}

/// Ends one HTTP/2 stream's task at once, resetting the stream.
#[derive(Clone, Debug)]
pub(crate) struct StreamReset(Arc<Notify>);

impl StreamReset {
    /// Ends the stream's task; its client sees RST_STREAM with CANCEL.
    pub(crate) fn reset(&self) {
        // A stored permit if the task is not waiting yet: the reset is not lost.
        self.0.notify_one();
    }

    /// The handle of the stream task this runs in; `None` outside one (HTTP/1).
    pub(super) fn current() -> Option<StreamReset> {
        STREAM.try_with(Clone::clone).ok()
    }
}

/// Spawns hyper's HTTP/2 stream tasks on tokio, each one endable through its
/// [`StreamReset`].
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct StreamExecutor;

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, task: F) {
        let reset = StreamReset(Arc::new(Notify::new()));
        let fired = Arc::clone(&reset.0);
        tokio::spawn(STREAM.scope(reset, async move {
            tokio::select! {
                () = task => {}
                () = fired.notified() => {}
            }
        }));
    }
}
