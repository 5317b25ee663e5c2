//! The admin API over a Unix socket in a temporary directory.
use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::admin::{cli, grpc, proto};

struct Server {
    _dir: tempfile::TempDir,
    path: PathBuf,
    stop: CancellationToken,
    task: JoinHandle<Result<(), AdminError>>,
}

impl Server {
    fn start(source: Arc<FakeSource>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/admin.sock");
        let socket = grpc::AdminSocket::bind(&path).unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(socket.serve(source, stop.clone()));
        Server {
            _dir: dir,
            path,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the server stops when told")
            .unwrap()
            .unwrap();
        assert!(!self.path.exists(), "the socket file is removed on stop");
    }
}

#[tokio::test]
async fn unary_calls() {
    let server = Server::start(FakeSource::new());
    let mode = std::fs::metadata(&server.path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        cli::fetch_status(&server.path).await.unwrap(),
        FakeSource::new().status()
    );
    assert_eq!(
        cli::fetch_workloads(&server.path).await.unwrap(),
        super::workloads()
    );
    assert_eq!(
        cli::fetch_connections(&server.path).await.unwrap(),
        super::connections()
    );
    assert_eq!(
        cli::fetch_certificates(&server.path).await.unwrap(),
        super::certificates()
    );
    server.stop().await;
}

#[tokio::test]
async fn flows_stream_filtered_events_published_after_subscribing() {
    let source = FakeSource::new();
    let server = Server::start(source.clone());
    let mut client = cli::connect(&server.path).await.unwrap();
    let filter = FlowFilter {
        source: Some("sleep".into()),
        destination: None,
        kind: Some(FlowKind::Deny),
    };
    let mut stream = client
        .flows(proto::FlowsRequest::from(&filter))
        .await
        .unwrap()
        .into_inner();
    source
        .flows
        .send(flow(FlowKind::Open, "sleep", "httpbin"))
        .unwrap();
    source
        .flows
        .send(flow(FlowKind::Deny, "curl", "httpbin"))
        .unwrap();
    let wanted = flow(FlowKind::Deny, "sleep", "httpbin");
    source.flows.send(wanted.clone()).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("an event in time")
        .unwrap()
        .expect("an event, not the end");
    assert_eq!(FlowEvent::try_from(got).unwrap(), wanted);

    // Stopping the daemon ends open streams, rather than waiting for them.
    server.stop().await;
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the stream ends");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
}

#[tokio::test]
async fn cli_follows_flows() {
    let source = FakeSource::new();
    let server = Server::start(source.clone());
    let publisher = {
        let source = source.clone();
        tokio::spawn(async move {
            // Until the CLI has subscribed, nobody receives.
            while source.flows.receiver_count() == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            source
                .flows
                .send(flow(FlowKind::Open, "sleep", "httpbin"))
                .unwrap();
            source
                .flows
                .send(flow(FlowKind::Close, "curl", "httpbin"))
                .unwrap();
            source
                .flows
                .send(flow(FlowKind::Close, "sleep", "httpbin"))
                .unwrap();
        })
    };
    let filter = FlowFilter {
        source: Some("sleep".into()),
        ..FlowFilter::default()
    };
    let mut out = Vec::new();
    let never = std::future::pending::<()>();
    tokio::time::timeout(
        Duration::from_secs(10),
        cli::follow_flows(
            &server.path,
            cli::OutputFormat::Json,
            &filter,
            Some(2),
            &mut out,
            never,
        ),
    )
    .await
    .expect("two events in time")
    .unwrap();
    publisher.await.unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (lines[0]["kind"].as_str(), lines[0]["source"].as_str()),
        (Some("open"), Some("sleep"))
    );
    assert_eq!(
        (lines[1]["kind"].as_str(), lines[1]["source"].as_str()),
        (Some("close"), Some("sleep"))
    );
    server.stop().await;
}

#[tokio::test]
async fn socket_file_handling() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    // A daemon that died left its socket: replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let socket = grpc::AdminSocket::bind(&path).unwrap();
    // A live one is not.
    let e = grpc::AdminSocket::bind(&path).err().unwrap();
    assert!(matches!(e, AdminError::SocketInUse { .. }), "{e}");
    drop(socket);
    // Nor is a file that is not a socket.
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let e = grpc::AdminSocket::bind(&file).err().unwrap();
    assert!(matches!(e, AdminError::NotASocket { .. }), "{e}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
}

#[tokio::test]
async fn no_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let e = cli::connect(&dir.path().join("absent.sock"))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("cannot reach the daemon on"), "{e}");
    assert!(e.contains("No such file or directory"), "{e}");
    assert!(e.contains("is mesh-node running"), "{e}");
}

const CHILD_SOCKET_ENV: &str = "MESH_ADMIN_TEST_FOREIGN_SOCKET";
const CHILD_TEST: &str = "admin::tests::grpc::foreign_netns_child";

/// A caller in another network namespace (a pod) is refused, even with access to the socket
/// file. The caller is this test binary re-run in a new network namespace, since the
/// daemon identifies callers by process (a thread that unshares would not do).
#[tokio::test]
async fn caller_in_another_network_namespace_is_refused() {
    if std::fs::metadata("/proc/self").map(|m| m.uid()).ok() != Some(0) {
        println!("skipped: creating a network namespace needs root");
        return;
    }
    let server = Server::start(FakeSource::new());
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap());
    child
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_SOCKET_ENV, &server.path);
    // SAFETY: between fork and exec the child only makes the unshare system call, which is
    // async-signal-safe, and reads errno.
    unsafe {
        child.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let out = match child.output().await {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            println!("skipped: cannot create a network namespace here: {e}");
            server.stop().await;
            return;
        }
        Err(e) => panic!("cannot run the child: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("foreign caller: refused: the caller is in another network namespace"),
        "child status {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The node itself still gets answers.
    let mut client = cli::connect(&server.path).await.unwrap();
    client.status(proto::StatusRequest {}).await.unwrap();
    server.stop().await;
}

/// The client half of the test above: does nothing unless run by it.
#[test]
fn foreign_netns_child() {
    let Some(path) = std::env::var_os(CHILD_SOCKET_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome = runtime.block_on(async {
        let mut client = match cli::connect(Path::new(&path)).await {
            Ok(client) => client,
            Err(e) => return format!("error: {e}"),
        };
        match client.status(proto::StatusRequest {}).await {
            Ok(_) => "allowed".to_owned(),
            Err(s) if s.code() == tonic::Code::PermissionDenied => format!("refused: {}", s.message()),
            Err(s) => format!("error: {s}"),
        }
    });
    println!("foreign caller: {outcome}");
}
