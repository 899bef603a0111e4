use super::*;

fn caps(auth: &str) -> Capabilities {
    Capabilities {
        extensions: vec![("AUTH".into(), auth.into())],
    }
}

#[test]
fn chooses_the_mechanism_from_what_is_offered() {
    assert_eq!(
        Mechanism::choose(&caps("LOGIN PLAIN"), SecretKind::Password),
        Some(Mechanism::Plain)
    );
    assert_eq!(
        Mechanism::choose(&caps("LOGIN"), SecretKind::Password),
        Some(Mechanism::Login)
    );
    assert_eq!(
        Mechanism::choose(&caps("CRAM-MD5"), SecretKind::Password),
        None
    );
    assert_eq!(
        Mechanism::choose(&caps("PLAIN XOAUTH2"), SecretKind::OAuthToken),
        Some(Mechanism::XOAuth2)
    );
    assert_eq!(
        Mechanism::choose(&Capabilities::default(), SecretKind::Password),
        None
    );
}

async fn scripted(server_says: &'static [u8]) -> (SmtpClient<BoxStream>, tokio::io::DuplexStream) {
    let (client_end, mut server_end) = tokio::io::duplex(64 * 1024);
    server_end.write_all(server_says).await.unwrap();
    (
        SmtpClient::new(Box::new(client_end) as BoxStream, Duration::from_secs(5)),
        server_end,
    )
}

async fn written(server_end: &mut tokio::io::DuplexStream) -> String {
    let mut buf = vec![0; 64 * 1024];
    let n = server_end.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn pipelined_transaction_with_a_refused_recipient() {
    let replies = b"250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n354 go\r\n250 2.0.0 queued\r\n";
    let (mut client, mut server) = scripted(replies).await;
    let rcpts = vec!["a@x.y".to_owned(), "b@x.y".to_owned()];
    let result = client
        .transaction(
            "<s@x.y>",
            &rcpts,
            (&b"Subject: t\r\n\r\n.dot\r\n"[..], None),
            true,
        )
        .await
        .unwrap();
    assert!(
        matches!(&result[0], RcptReply::Accepted(r) if r.code == 250 && r.text() == "2.0.0 queued")
    );
    assert!(matches!(&result[1], RcptReply::Refused(r) if r.code == 550));
    let sent = written(&mut server).await;
    assert_eq!(
        sent,
        "MAIL FROM:<s@x.y>\r\nRCPT TO:<a@x.y>\r\nRCPT TO:<b@x.y>\r\nDATA\r\nSubject: t\r\n\r\n..dot\r\n.\r\n"
    );
}

#[tokio::test]
async fn refused_sender_fails_every_recipient_and_resets() {
    // MAIL, RCPT and DATA went out together: each gets its reply, then RSET.
    let (mut client, mut server) =
        scripted(b"451 4.3.0 busy\r\n503 no\r\n503 no\r\n250 reset\r\n").await;
    let result = client
        .transaction(
            "<s@x.y>",
            &["a@x.y".to_owned()],
            (&b"x\r\n"[..], None),
            true,
        )
        .await
        .unwrap();
    assert!(matches!(&result[0], RcptReply::Refused(r) if r.code == 451));
    assert!(written(&mut server).await.ends_with("RSET\r\n"));
}

#[tokio::test]
async fn a_pipelined_data_accepted_without_recipients_is_ended_empty() {
    // RFC 2920 §3.1: a server may answer 354 although every RCPT failed; the client
    // ends that message at once with a lone dot, and sends none of the content.
    let replies =
        b"250 ok\r\n550 5.1.1 no such user\r\n354 go\r\n554 no recipients\r\n250 reset\r\n";
    let (mut client, mut server) = scripted(replies).await;
    let result = client
        .transaction(
            "<s@x.y>",
            &["a@x.y".to_owned()],
            (&b"secret body\r\n"[..], None),
            true,
        )
        .await
        .unwrap();
    assert!(matches!(&result[0], RcptReply::Refused(r) if r.code == 550));
    assert!(!client.reached_data());
    let sent = written(&mut server).await;
    assert_eq!(
        sent,
        "MAIL FROM:<s@x.y>\r\nRCPT TO:<a@x.y>\r\nDATA\r\n.\r\nRSET\r\n"
    );
}

#[tokio::test]
async fn the_rset_between_messages_goes_out_with_the_next_command_group() {
    let replies = b"250 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 queued\r\n";
    let (mut client, mut server) = scripted(replies).await;
    client.reset_before_next();
    let result = client
        .transaction(
            "<s@x.y>",
            &["a@x.y".to_owned()],
            (&b"x\r\n"[..], None),
            true,
        )
        .await
        .unwrap();
    assert!(matches!(&result[0], RcptReply::Accepted(r) if r.text() == "2.0.0 queued"));
    assert_eq!(
        written(&mut server).await,
        "RSET\r\nMAIL FROM:<s@x.y>\r\nRCPT TO:<a@x.y>\r\nDATA\r\nx\r\n.\r\n"
    );
}

#[tokio::test]
async fn a_421_to_the_rset_of_a_pooled_connection_ends_the_transaction() {
    let (mut client, _server) = scripted(b"421 4.4.2 idle too long\r\n").await;
    client.reset_before_next();
    let result = client
        .transaction(
            "<s@x.y>",
            &["a@x.y".to_owned()],
            (&b"x\r\n"[..], None),
            true,
        )
        .await
        .unwrap();
    assert!(matches!(&result[0], RcptReply::Refused(r) if r.code == 421));
    assert!(!client.reached_data());
}

#[tokio::test]
async fn without_pipelining_each_command_waits_for_its_reply() {
    let replies = b"250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 queued\r\n";
    let (mut client, mut server) = scripted(replies).await;
    let result = client
        .transaction(
            "<s@x.y>",
            &["a@x.y".to_owned()],
            (&b"x\r\n"[..], None),
            false,
        )
        .await
        .unwrap();
    assert!(matches!(&result[0], RcptReply::Accepted(r) if r.code == 250));
    assert_eq!(
        written(&mut server).await,
        "MAIL FROM:<s@x.y>\r\nRCPT TO:<a@x.y>\r\nDATA\r\nx\r\n.\r\n"
    );
}

#[tokio::test]
async fn a_421_ends_the_transaction_with_its_reply() {
    let (mut client, _server) = scripted(b"421 4.7.0 closing\r\n").await;
    let rcpts = vec!["a@x.y".to_owned(), "b@x.y".to_owned()];
    let result = client
        .transaction("<s@x.y>", &rcpts, (&b"x\r\n"[..], None), true)
        .await
        .unwrap();
    assert_eq!(result.len(), 2);
    assert!(
        result
            .iter()
            .all(|r| matches!(r, RcptReply::Refused(r) if r.code == 421))
    );
}

#[tokio::test(start_paused = true)]
async fn a_server_that_stops_reading_fails_the_data_write_after_the_timeout() {
    // The server answers up to 354, then reads nothing: the 1 MiB message cannot
    // get through a 64 KiB pipe.
    let (mut client, _server) = scripted(b"250 ok\r\n250 ok\r\n354 go\r\n").await;
    let content = vec![b'x'; 1024 * 1024];
    let started = tokio::time::Instant::now();
    let err = client
        .transaction("<s@x.y>", &["a@x.y".to_owned()], (&content[..], None), true)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::WriteStalled(d) if d == Duration::from_secs(5)),
        "{err:?}"
    );
    // No progress for 5 s, not 5 s for the whole message.
    assert_eq!(started.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn a_slow_reader_that_keeps_reading_is_not_a_stall() {
    let (client_end, mut server_end) = tokio::io::duplex(64 * 1024);
    server_end
        .write_all(b"250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 queued\r\n")
        .await
        .unwrap();
    let mut client = SmtpClient::new(Box::new(client_end) as BoxStream, Duration::from_secs(5));
    // 32 KiB every 4 s: 2 MiB takes minutes, each write moves within the timeout.
    let reader = tokio::spawn(async move {
        let mut total = 0;
        let mut buf = vec![0; 32 * 1024];
        loop {
            tokio::time::sleep(Duration::from_secs(4)).await;
            match server_end.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    });
    let content = vec![b'x'; 2 * 1024 * 1024];
    let replies = client
        .transaction("<s@x.y>", &["a@x.y".to_owned()], (&content[..], None), true)
        .await
        .unwrap();
    assert!(matches!(&replies[0], RcptReply::Accepted(r) if r.code == 250));
    drop(client);
    assert!(reader.await.unwrap() >= content.len());
}

#[tokio::test(start_paused = true)]
async fn the_final_reply_is_awaited_longer_than_the_others() {
    let (client_end, mut server_end) = tokio::io::duplex(64 * 1024);
    server_end
        .write_all(b"250 ok\r\n250 ok\r\n354 go\r\n")
        .await
        .unwrap();
    let mut client = SmtpClient::new(Box::new(client_end) as BoxStream, Duration::from_secs(5))
        .with_final_reply_timeout(Duration::from_secs(600));
    let server = tokio::spawn(async move {
        let mut buf = vec![0; 64 * 1024];
        let _ = server_end.read(&mut buf).await;
        // Well past `timeout`, within the final-reply limit.
        tokio::time::sleep(Duration::from_secs(60)).await;
        server_end.write_all(b"250 2.0.0 queued\r\n").await.unwrap();
        server_end
    });
    let replies = client
        .transaction(
            "<s@x.y>",
            &["a@x.y".to_owned()],
            (&b"x\r\n"[..], None),
            true,
        )
        .await
        .unwrap();
    assert!(matches!(&replies[0], RcptReply::Accepted(r) if r.code == 250));
    let _server = server.await.unwrap();

    let (mut client, _server) = scripted(b"250 ok\r\n250 ok\r\n354 go\r\n").await;
    let mut client = {
        client.final_reply_timeout = Duration::from_secs(90);
        client
    };
    let err = client
        .transaction(
            "<s@x.y>",
            &["a@x.y".to_owned()],
            (&b"x\r\n"[..], None),
            true,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::FinalReplyTimeout(d) if d == Duration::from_secs(90)),
        "{err:?}"
    );
}

#[tokio::test]
async fn auth_plain_and_login() {
    let creds = Credentials {
        username: "u".into(),
        secret: Secret::new("p"),
        kind: SecretKind::Password,
    };
    let (mut client, mut server) = scripted(b"235 ok\r\n").await;
    client.authenticate(Mechanism::Plain, &creds).await.unwrap();
    assert_eq!(written(&mut server).await, "AUTH PLAIN AHUAcA==\r\n");

    let (mut client, mut server) =
        scripted(b"334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n535 5.7.8 bad\r\n").await;
    let err = client
        .authenticate(Mechanism::Login, &creds)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Refused { ref command, ref response } if command == "AUTH LOGIN" && response.code == 535)
    );
    assert!(
        !err.to_string().contains("cA=="),
        "the secret must not appear in errors: {err}"
    );
    assert_eq!(written(&mut server).await, "AUTH LOGIN\r\ndQ==\r\ncA==\r\n");
}
