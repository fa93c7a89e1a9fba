//! Following the other replicas: a dedicated connection (a pooled one drops
//! notifications) LISTENs on the change channel and hands every notified generation on.

use std::{sync::Arc, time::Duration};

use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use token_authority_jose::backoff::Backoff;

use super::{PgStore, CHANNEL};

use crate::{store::StoreError, telemetry::chain};

impl PgStore {
    /// Keeps a dedicated connection LISTENing on the change channel and sends every
    /// notified generation (and a `0` after each reconnection, when some may have been
    /// missed) to `changes`, until the receiver is dropped. Reconnects with backoff.
    pub(crate) async fn listen(self: Arc<Self>, changes: mpsc::Sender<u64>) {
        self.listen_on(CHANNEL, changes).await;
    }

    /// `listen` on `channel`: each notification's payload as a number (0 when it is not
    /// one), and a `0` after each reconnection.
    pub(crate) async fn listen_on(
        self: Arc<Self>,
        channel: &'static str,
        changes: mpsc::Sender<u64>,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match self.listen_once(channel, &changes).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(error = %chain(&error), "keystore notifications lost; reconnecting");
                }
            }
            if changes.is_closed() {
                return;
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// One LISTEN connection, until it fails (`Err`) or nobody listens any more (`Ok`).
    async fn listen_once(
        &self,
        channel: &str,
        changes: &mpsc::Sender<u64>,
    ) -> Result<(), StoreError> {
        let (client, mut connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(|e| self.unavailable(e))?;
        let (messages_tx, mut messages) = mpsc::unbounded_channel();
        // The connection is driven here, not by `connection.await` (which drops
        // notifications): every message it yields is forwarded.
        let driver = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(message)) => {
                        if messages_tx.send(message).is_err() {
                            return;
                        }
                    }
                    Some(Err(error)) => {
                        tracing::debug!(error = %chain(&error), "keystore notification connection failed");
                        return;
                    }
                    None => return,
                }
            }
        });
        let result = async {
            client
                .batch_execute(&format!("LISTEN {channel}"))
                .await
                .map_err(|e| self.unavailable(e))?;
            // Listening from here on: whatever changed while not listening is re-read.
            if changes.send(0).await.is_err() {
                return Ok(());
            }
            loop {
                let message = tokio::select! {
                    message = messages.recv() => message,
                    // The replica stopped following: close the connection now, not at the
                    // next notification.
                    () = changes.closed() => return Ok(()),
                };
                match message {
                    Some(AsyncMessage::Notification(notification)) => {
                        let generation = notification.payload().parse().unwrap_or(0);
                        if changes.send(generation).await.is_err() {
                            return Ok(());
                        }
                    }
                    Some(_) => {}
                    None => return Err(self.unavailable("the notification connection closed")),
                }
            }
        }
        .await;
        driver.abort();
        result
    }
}
