//! Graceful shutdown: idle sessions are closed with 421, a transaction in progress may
//! finish, and `shutdown()` returns once the last session has ended.

pub mod support;

use support::{HANG_GUARD, STRICT_HEAD, start_relay};

#[tokio::test]
async fn shutdown_lets_the_transaction_finish_and_closes_idle_sessions() {
    // The grace period is far longer than HANG_GUARD: shutdown must end because the
    // sessions did, not because the grace period ran out.
    let mut relay = start_relay("[server]\nshutdown_grace = \"120s\"\n").await;
    let mut busy = relay.client().await;
    busy.expect("MAIL FROM:<a@example.com>", 250).await;
    busy.expect("RCPT TO:<b@example.net>", 250).await;
    let mut idle = relay.client().await;

    let shutdown = tokio::spawn(relay.take_handle().shutdown());

    let reply = idle.expect_reply_esc(421, "4.3.2").await;
    assert!(reply.text().contains("shutting down"), "{reply}");
    idle.expect_closed().await;

    // The shutdown is under way (the idle session heard of it); the busy one finishes.
    busy.expect("DATA", 354).await;
    // Strict headers: the content arrives exactly as sent.
    let content = format!("{STRICT_HEAD}Subject: last one in\r\n\r\nbody\r\n");
    busy.send(format!("{content}.\r\n")).await;
    busy.expect_reply_esc(250, "2.0.0").await.queue_id();
    // Now idle too, it is closed the same way.
    busy.expect_reply_esc(421, "4.3.2").await;
    busy.expect_closed().await;

    tokio::time::timeout(HANG_GUARD, shutdown)
        .await
        .expect("shutdown did not complete after the last session ended")
        .expect("shutdown task panicked");

    let messages = relay.wait_for_messages(1).await;
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert!(messages[0].text().ends_with(&content), "{messages:?}");
}

#[tokio::test]
async fn after_the_grace_period_a_transaction_in_progress_is_closed_with_421() {
    let mut relay = start_relay("[server]\nshutdown_grace = \"1s\"\n").await;
    let mut busy = relay.client().await;
    busy.expect("MAIL FROM:<a@example.com>", 250).await;
    busy.expect("RCPT TO:<b@example.net>", 250).await;
    busy.expect("DATA", 354).await;
    busy.send("Subject: too slow\r\n\r\nhalf").await;

    let shutdown = tokio::spawn(relay.take_handle().shutdown());
    busy.expect_reply_esc(421, "4.3.2").await;
    busy.expect_closed().await;
    tokio::time::timeout(HANG_GUARD, shutdown)
        .await
        .expect("shutdown did not complete")
        .expect("shutdown task panicked");
    assert!(relay.messages().is_empty(), "{:#?}", relay.messages());
}
