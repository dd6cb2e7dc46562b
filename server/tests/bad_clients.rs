//! Clients that misbehave get a clear error on their own session (or are
//! disconnected) while a well-behaved client keeps committing, and nothing
//! it was told is durable is lost.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use bytes::Bytes;
use common::*;
use tc_client::{ClientError, ErrorCode};
use tc_model::ObjectId;
use tc_model::dna::{Dna, LockRef, Transaction};
use tc_model::{ClassId, Value};
use tc_protocol::client_message::Body as In;
use tc_protocol::server_message::Body as Out;
use tc_protocol::{ClientMessage, Hello, ServerMessage};
use tokio_stream::StreamExt;

fn code_of(result: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A client committing increments alongside the bad ones; returns the last
/// acknowledged value when stopped.
struct GoodClient {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
    id: ObjectId,
}

impl GoodClient {
    async fn start(server: &TestServer) -> GoodClient {
        let client = server.client(1000).await;
        let (_, id) = create_counter(&client, "good").await;
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicI64::new(0));
        let (s, a) = (stop.clone(), acked.clone());
        let task = tokio::spawn(async move {
            let mut value = 0;
            while !s.load(Ordering::Relaxed) {
                value += 1;
                client
                    .commit(set_value(&client, id, value, LockRef::None))
                    .await
                    .expect("good client commit");
                a.store(value, Ordering::Relaxed);
            }
        });
        GoodClient {
            stop,
            acked,
            task,
            id,
        }
    }

    /// Stops it and checks every acknowledged change is in the store.
    async fn check(self, server: &TestServer) {
        let before = self.acked.load(Ordering::Relaxed);
        eventually("the good client to keep committing", || {
            self.acked.load(Ordering::Relaxed) > before
        })
        .await;
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the good client never failed");
        let acked = self.acked.load(Ordering::Relaxed);
        let reader = server.client(2000).await;
        assert_eq!(value_of(&reader, self.id).await, acked);
    }
}

async fn raw_session(
    server: &TestServer,
    hello: Hello,
) -> (
    tokio::sync::mpsc::Sender<ClientMessage>,
    tonic::Streaming<ServerMessage>,
) {
    let mut grpc = tc_protocol::tc_client::TcClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(ClientMessage::new(1, In::Hello(hello)))
        .await
        .unwrap();
    let inbound = grpc
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, inbound)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_protocol_version_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let good = GoodClient::start(&server).await;
    let hello = Hello {
        protocol_version: 99,
        client_id: 5,
        client_name: "old".into(),
    };
    let (_tx, mut inbound) = raw_session(&server, hello).await;
    match inbound.next().await {
        Some(Ok(ServerMessage {
            body: Some(Out::Error(error)),
            ..
        })) => {
            assert_eq!(error.code, ErrorCode::VersionMismatch as i32);
            assert!(error.message.contains("99") && error.fatal, "{error:?}");
        }
        other => panic!("expected a version error, got {other:?}"),
    }
    assert!(
        inbound.next().await.is_none_or(|m| m.is_err()),
        "the session goes on"
    );
    good.check(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_must_start_with_hello() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let mut grpc = tc_protocol::tc_client::TcClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(ClientMessage::new(1, In::Heartbeat(Default::default())))
        .await
        .unwrap();
    let mut inbound = grpc
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    match inbound.next().await {
        Some(Ok(ServerMessage {
            body: Some(Out::Error(error)),
            ..
        })) => assert!(error.message.contains("Hello") && error.fatal, "{error:?}"),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_errors_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let good = GoodClient::start(&server).await;
    let bad = server.client(7).await;
    let (_, id) = create_counter(&bad, "mine").await;

    // Bytes that are not a transaction.
    assert_eq!(
        code_of(bad.commit(Bytes::from_static(b"\x01garbage")).await),
        ErrorCode::Malformed
    );
    // An unknown object and an unknown class.
    let unknown_object = Transaction {
        client: 7,
        seq: bad.next_seq(),
        lock: LockRef::None,
        roots: vec![],
        dnas: vec![Dna::update(ObjectId(1 << 40)).field(0, Value::Long(1))],
    };
    let code = code_of(bad.commit(unknown_object.encode()).await);
    assert!(
        matches!(code, ErrorCode::UnknownObject | ErrorCode::Rejected),
        "{code:?}"
    );
    let fresh = ObjectId(bad.allocate_ids(1).await.unwrap().start);
    let unknown_class = Transaction {
        client: 7,
        seq: bad.next_seq(),
        lock: LockRef::None,
        roots: vec![],
        dnas: vec![Dna::new_object(fresh, ClassId(4242))],
    };
    assert_eq!(
        code_of(bad.commit(unknown_class.encode()).await),
        ErrorCode::UnknownClass
    );
    // A field of the wrong kind.
    let wrong_kind = Transaction {
        client: 7,
        seq: bad.next_seq(),
        lock: LockRef::None,
        roots: vec![],
        dnas: vec![Dna::update(id).field(0, Value::Boolean(true))],
    };
    assert_eq!(
        code_of(bad.commit(wrong_kind.encode()).await),
        ErrorCode::Rejected
    );
    // A transaction over the limit (1 MiB by default).
    let huge = Transaction {
        client: 7,
        seq: bad.next_seq(),
        lock: LockRef::None,
        roots: vec![],
        dnas: vec![Dna::update(id).field(1, Value::String("x".repeat(2 << 20)))],
    };
    assert_eq!(
        code_of(bad.commit(huge.encode()).await),
        ErrorCode::TooLarge
    );
    // Releasing, waiting on and notifying a lock not held.
    let release = In::Release(tc_protocol::LockRelease {
        lock: Some(tc_protocol::LockKey::named("nobody")),
        thread: 1,
        transaction: Bytes::new(),
    });
    assert_eq!(code_of(bad.request_raw(release).await), ErrorCode::NotHeld);
    let notify = In::Notify(tc_protocol::Notify {
        lock: Some(tc_protocol::LockKey::named("nobody")),
        thread: 1,
        all: true,
    });
    assert_eq!(code_of(bad.request_raw(notify).await), ErrorCode::NotHeld);
    let no_key = In::Lock(tc_protocol::LockRequest {
        lock: None,
        thread: 1,
        mode: tc_protocol::LockMode::Write as i32,
        greedy: false,
    });
    assert_eq!(code_of(bad.request_raw(no_key).await), ErrorCode::Malformed);
    let long_name = In::Lock(tc_protocol::LockRequest {
        lock: Some(tc_protocol::LockKey::named("n".repeat(5000))),
        thread: 1,
        mode: tc_protocol::LockMode::Write as i32,
        greedy: false,
    });
    assert_eq!(
        code_of(bad.request_raw(long_name).await),
        ErrorCode::TooLarge
    );
    let too_many_ids = In::FetchObjects(tc_protocol::FetchObjects {
        ids: (1..5000).collect(),
    });
    assert_eq!(
        code_of(bad.request_raw(too_many_ids).await),
        ErrorCode::TooLarge
    );
    assert!(bad.allocate_ids(0).await.is_err());
    let bad_class = In::RegisterClass(tc_protocol::RegisterClass {
        definition: Bytes::from_static(b"\xff\xff\xff"),
    });
    assert_eq!(
        code_of(bad.request_raw(bad_class).await),
        ErrorCode::Malformed
    );
    // After all that, the session still works.
    bad.commit(set_value(&bad, id, 5, LockRef::None))
        .await
        .unwrap();
    assert_eq!(value_of(&bad, id).await, 5);
    good.check(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_message_closes_only_that_session() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let good = GoodClient::start(&server).await;
    let bad = server.client(7).await;
    let result = bad.commit(Bytes::from(vec![1u8; 5 << 20])).await;
    assert!(
        matches!(
            result,
            Err(ClientError::Closed(_) | ClientError::Refused { .. })
        ),
        "{result:?}"
    );
    eventually("the bad session to close", || bad.closed_reason().is_some()).await;
    good.check(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_requests_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tc.toml");
    std::fs::write(&config, "max_in_flight = 8\n").unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start(&data, &["--config", config.to_str().unwrap()]);
    let good = GoodClient::start(&server).await;
    let bad = server.client(7).await;
    let (_, id) = create_counter(&bad, "flood").await;
    let mut requests = Vec::new();
    for value in 0..2000 {
        let bad = bad.clone();
        let tx = set_value(&bad, id, value, LockRef::None);
        requests.push(tokio::spawn(async move { bad.commit(tx).await }));
    }
    let mut refused = 0;
    for request in requests {
        match request.await.unwrap() {
            Ok(_) => {}
            Err(ClientError::Refused {
                code: ErrorCode::TooManyRequests,
                ..
            }) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        refused > 0,
        "2000 concurrent commits with max_in_flight = 8 were all accepted"
    );
    bad.commit(set_value(&bad, id, -1, LockRef::None))
        .await
        .unwrap();
    good.check(&server).await;
}

/// Sends each element as one gRPC message, unchanged: bytes that need not
/// be a valid `ClientMessage`.
struct RawCodec;

struct RawEncoder;

struct ServerMessageDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for ServerMessageDecoder {
    type Item = ServerMessage;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<ServerMessage>, tonic::Status> {
        use prost::Message;
        ServerMessage::decode(src)
            .map(Some)
            .map_err(|err| tonic::Status::internal(err.to_string()))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ServerMessage;
    type Encoder = RawEncoder;
    type Decoder = ServerMessageDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> ServerMessageDecoder {
        ServerMessageDecoder
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_a_message_end_only_that_session() {
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let good = GoodClient::start(&server).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let hello = ClientMessage::new(
        1,
        In::Hello(Hello {
            protocol_version: tc_protocol::PROTOCOL_VERSION,
            client_id: 9,
            client_name: "raw".into(),
        }),
    );
    // A valid Hello, then a field tag with wire type 7 (there is none).
    let messages = vec![hello.encode_to_vec(), vec![0x0f, 0xff, 0xff, 0xff]];
    let request = tonic::Request::new(tokio_stream::iter(messages));
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/tc.v1.Tc/Session");
    let mut inbound = grpc
        .streaming(request, path, RawCodec)
        .await
        .unwrap()
        .into_inner();
    match inbound.next().await {
        Some(Ok(ServerMessage {
            body: Some(Out::Welcome(_)),
            ..
        })) => {}
        other => panic!("expected Welcome, got {other:?}"),
    }
    match inbound.next().await {
        Some(Ok(ServerMessage {
            body: Some(Out::Error(error)),
            ..
        })) => {
            assert_eq!(error.code, ErrorCode::Malformed as i32);
            assert!(error.fatal, "{error:?}");
            assert!(!error.message.is_empty());
        }
        other => panic!("expected an error, got {other:?}"),
    }
    good.check(&server).await;
}
