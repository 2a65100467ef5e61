//! Past one box: three sluice nodes sharing a real `redis-server`. A
//! stream published on one node plays on every other (one SRT pull per
//! node whatever the number of players there), a publish of the same path
//! elsewhere is refused naming the owner, a crashed origin frees its path
//! once its lease expires, Redis going away stops nothing, and a drain
//! releases the node's claims at once.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const SECRET: &str = "cluster-test-secret-0123456789";
/// Short, so that the tests see expiry and idle ends quickly.
const LEASE: Duration = Duration::from_secs(2);
const PEER_IDLE: Duration = Duration::from_secs(2);

/// One node: its process, its name and the SRT port it advertises.
struct Node {
    sluice: Sluice,
    id: &'static str,
}

impl Node {
    fn start(redis: &Redis, id: &'static str) -> Node {
        Self::start_with(redis, id, "")
    }

    fn start_with(redis: &Redis, id: &'static str, extra: &str) -> Node {
        let srt_port = free_udp_port();
        let config = format!(
            r#"
[srt]
latency = "20ms"
peer_idle_timeout = "{peer_idle}s"

[cluster]
redis_url = "{url}"
node_id = "{id}"
advertise_srt = "127.0.0.1:{srt_port}"
secret = "{SECRET}"
lease_ttl = "{lease}s"
edge_idle = "3s"
{extra}
"#,
            url = redis.url(),
            peer_idle = PEER_IDLE.as_secs(),
            lease = LEASE.as_secs(),
        );
        let args = ephemeral_args_srt_port(srt_port);
        Node {
            sluice: Sluice::start_raw(Some(&config), args),
            id,
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.sluice.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} node {}", self.id);
    }

    /// The stream's `/readyz` cluster object.
    fn cluster_state(&self) -> Value {
        let (status, body) = self.sluice.get("/readyz");
        assert_eq!(status, 200, "node {}: /readyz {body}", self.id);
        let v: Value = serde_json::from_str(&body).unwrap();
        v["cluster"].clone()
    }
}

/// ffmpeg publishing the 2 s-GOP H.264/AAC fixture over RTMP, looped.
fn publish(node: &Node, path: &str) -> ChildGuard {
    publish_fixture(
        &fixture_avc_aac(60),
        &node.sluice.rtmp_url(path),
        PublishFor::Forever,
    )
}

/// Publish `path` on `node` again and again, as an encoder does after a
/// refusal, until it is live there.
fn publish_until_live(node: &Node, path: &str, within: Duration) -> ChildGuard {
    let deadline = Instant::now() + within;
    let mut publisher = publish(node, path);
    loop {
        let live = node
            .sluice
            .stream(path)
            .is_some_and(|s| json_str(&s, "/publisher/protocol") == Some("rtmp"));
        if live {
            wait_live(node, path);
            return publisher;
        }
        assert!(
            Instant::now() < deadline,
            "node {} never got {path}: {}",
            node.id,
            node.sluice.log_tail(20)
        );
        if !publisher.is_running() {
            publisher = publish(node, path);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_live(node: &Node, path: &str) {
    node.sluice.wait_for_stream(
        path,
        |s| json_f64(s, "/keyframes_in").is_some_and(|k| k >= 1.0),
        Duration::from_secs(20),
    );
}

/// An ffmpeg player copying `path` from `node` into `out` until the
/// stream ends (or it is killed).
fn player(node: &Node, path: &str, out: &std::path::Path) -> ChildGuard {
    let mut cmd = Command::new(require_program("ffmpeg", "ffmpeg"));
    cmd.args(["-v", "error", "-y", "-i", &node.sluice.srt_url(path, "")])
        .args(["-map", "0", "-c", "copy", "-f", "mpegts"])
        .arg(out);
    ChildGuard::spawn("ffmpeg", cmd)
}

/// `out` starts with an IDR and decodes without a single error.
fn assert_clean(out: &std::path::Path, what: &str) {
    assert_eq!(ts_codecs(out), ["h264", "aac"], "{what}");
    let errors = decode_errors(out);
    assert!(errors.is_empty(), "{what} decodes with errors:\n{errors}");
    let frames = video_frames(out, 30);
    assert!(frames.len() >= 10, "{what}: {frames:?}");
    assert!(
        frames[0].0 && frames[0].1 == "I",
        "{what} starts with {:?}",
        frames[0]
    );
}

fn media_seconds(ts: &std::path::Path) -> f64 {
    let mut cmd = Command::new(require_program("ffprobe", "ffmpeg"));
    cmd.args([
        "-v",
        "error",
        "-show_entries",
        "format=duration",
        "-of",
        "csv=p=0",
    ])
    .arg(ts);
    let (_, out, _) = run_to_exit("ffprobe", cmd, Duration::from_secs(20));
    out.trim().parse().unwrap_or(0.0)
}

/// Nodes a, b and c, and `live/cam1` published and live on a.
fn origin_and_two_edges(redis: &Redis) -> (Node, Node, Node, ChildGuard) {
    let (a, b, c) = (
        Node::start(redis, "a"),
        Node::start(redis, "b"),
        Node::start(redis, "c"),
    );
    let publisher = publish(&a, "live/cam1");
    wait_live(&a, "live/cam1");
    (a, b, c, publisher)
}

#[test]
fn any_node_plays_the_stream_with_one_pull_per_node_and_a_second_publisher_is_refused_naming_the_owner(
) {
    let redis = Redis::start();
    let (a, b, c, _publisher) = origin_and_two_edges(&redis);
    let claim = redis.cli(&["GET", "sluice:stream:live/cam1"]);
    let claim: Value = serde_json::from_str(&claim).expect("a JSON claim in redis");
    assert_eq!(claim["node"], "a", "{claim}");
    assert_eq!(claim["srt"], a.sluice.srt_addr().to_string(), "{claim}");

    // A second publisher of the path on B is refused, naming A: RTMP
    // with BadName before it starts, SRT with 1409.
    let second = publish_fixture_command(
        &fixture_avc_aac(60),
        &b.sluice.rtmp_url("live/cam1"),
        PublishFor::Secs(5),
    );
    let (status, _, err) = run_to_exit("ffmpeg", second, Duration::from_secs(30));
    assert!(
        !status.success(),
        "a second publisher on B was accepted: {err}"
    );
    assert!(
        err.contains("is being published on node a"),
        "ffmpeg said: {err}"
    );
    let refused = b
        .sluice
        .wait_log_fields(&[("reason", "rejected_busy")], Duration::from_secs(5));
    assert!(
        refused
            .to_string()
            .contains("live/cam1 is being published on node a"),
        "{refused}"
    );
    let dir = TempDir::new("cluster");
    assert_eq!(
        libsrt_connect(&dir, b.sluice.srt_addr(), "#!::r=live/cam1,m=publish", ""),
        "rejected 1409"
    );
    assert!(b.sluice.stream("live/cam1").is_none());
    let claim: Value =
        serde_json::from_str(&redis.cli(&["GET", "sluice:stream:live/cam1"])).unwrap();
    assert_eq!(claim["node"], "a", "the origin kept its claim");

    // A pull token that is not the cluster's is refused; a directory
    // entry whose node does not answer gives the player 1404. (Before any
    // player: the listener keys players by address, and a libsrt caller
    // reusing a just-closed player's port would meet that connection.)
    assert_eq!(
        libsrt_connect(
            &dir,
            a.sluice.srt_addr(),
            "#!::r=live/cam1,m=request,node=b,ct=1-00",
            ""
        ),
        "rejected 1401"
    );
    let ghost = r#"{"node":"gone","srt":"127.0.0.1:1","since_ms":1,"renditions":["source"]}"#;
    redis.cli(&["SET", "sluice:stream:live/ghost", ghost, "PX", "60000"]);
    assert_eq!(
        libsrt_connect(&dir, b.sluice.srt_addr(), "live/ghost", ""),
        "rejected 1404",
        "{}",
        b.sluice.log_tail(12)
    );
    redis.cli(&["DEL", "sluice:stream:live/ghost"]);

    // Two players on B, one on C, at once.
    let outs: Vec<_> = ["b1", "b2", "c1"]
        .iter()
        .map(|n| dir.join(&format!("{n}.ts")))
        .collect();
    let threads: Vec<_> = [(&b, 0), (&b, 1), (&c, 2)]
        .into_iter()
        .map(|(node, i)| {
            let url = node.sluice.srt_url("live/cam1", "");
            let out = outs[i].clone();
            std::thread::spawn(move || record_srt(&url, 6, &out))
        })
        .collect();
    // While they play: one pull per node, and the origin serves two
    // players (the edges), not three.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(b.sluice.metric("sluice_cluster_edge_pulls"), Some(1.0));
    assert_eq!(c.sluice.metric("sluice_cluster_edge_pulls"), Some(1.0));
    let origin = a.sluice.stream("live/cam1").expect("live on A");
    assert_eq!(
        json_f64(&origin, "/renditions/0/players"),
        Some(2.0),
        "{origin}"
    );
    let edge = b
        .sluice
        .stream("live/cam1")
        .expect("the edge stream is listed on B");
    assert_eq!(
        json_str(&edge, "/publisher/protocol"),
        Some("edge"),
        "{edge}"
    );
    assert_eq!(json_str(&edge, "/origin_node"), Some("a"), "{edge}");
    assert_eq!(
        json_f64(&edge, "/renditions/0/players"),
        Some(2.0),
        "{edge}"
    );
    for t in threads {
        t.join().expect("player");
    }
    for (out, what) in outs.iter().zip(["B player 1", "B player 2", "C player"]) {
        assert_clean(out, what);
    }

    // Every node lists the cluster's streams from the directory.
    let (status, body) = c.sluice.get("/api/v1/streams?scope=cluster");
    assert_eq!(status, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["path"], "live/cam1");
    assert_eq!(list[0]["node"], "a");
    assert!(
        list[0]["since"].as_u64().is_some_and(|s| s > 1_700_000_000),
        "{list}"
    );

    // The edge pull ends edge_idle after its last player left.
    b.sluice.wait_metric(
        "sluice_cluster_edge_pulls",
        |v| v == Some(0.0),
        Duration::from_secs(10),
    );
    assert!(
        b.sluice.stream("live/cam1").is_none(),
        "the edge stream ended with its pull"
    );

    // The origin's stream ends (its publisher leaves): the edge's players
    // are closed as the origin's are.
    let mut on_c = player(&c, "live/cam1", &dir.join("c2.ts"));
    c.sluice.wait_metric(
        "sluice_cluster_edge_pulls",
        |v| v == Some(1.0),
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_secs(1));
    drop(_publisher);
    let ended = Instant::now();
    on_c.expect_exit(Duration::from_secs(6));
    assert!(
        ended.elapsed() < Duration::from_secs(4),
        "the player on C was closed {:?} after the origin's stream ended",
        ended.elapsed()
    );
}

#[test]
fn a_crashed_origin_closes_edge_players_and_its_path_frees_after_the_lease() {
    let redis = Redis::start();
    let (a, b, c, _publisher) = origin_and_two_edges(&redis);
    let dir = TempDir::new("cluster");
    let mut on_b = player(&b, "live/cam1", &dir.join("b.ts"));
    let mut on_c = player(&c, "live/cam1", &dir.join("c.ts"));
    b.sluice.wait_metric(
        "sluice_cluster_edge_pulls",
        |v| v == Some(1.0),
        Duration::from_secs(10),
    );
    c.sluice.wait_metric(
        "sluice_cluster_edge_pulls",
        |v| v == Some(1.0),
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_secs(2));

    a.signal("-KILL");
    let killed = Instant::now();
    // The edges notice within the SRT idle timeout and close their players.
    for (p, node) in [(&mut on_b, "B"), (&mut on_c, "C")] {
        p.expect_exit(PEER_IDLE + Duration::from_secs(8));
        assert!(
            killed.elapsed() < PEER_IDLE + Duration::from_secs(8),
            "the player on {node} was closed {:?} after the origin died",
            killed.elapsed()
        );
    }
    assert!(media_seconds(&dir.join("b.ts")) >= 2.0);

    // A's claim is still there until its lease expires: a publish on B is
    // refused, then accepted.
    let _publisher_b = publish_until_live(&b, "live/cam1", LEASE + Duration::from_secs(20));
    let claim: Value =
        serde_json::from_str(&redis.cli(&["GET", "sluice:stream:live/cam1"])).unwrap();
    assert_eq!(claim["node"], "b", "{claim}");
    // And C now plays it from B.
    let out = dir.join("c2.ts");
    record_srt(&c.sluice.srt_url("live/cam1", ""), 4, &out);
    assert_clean(&out, "C playing from B");
}

#[test]
fn redis_going_away_stops_no_stream_and_a_drain_releases_the_claims_at_once() {
    let mut redis = Redis::start();
    let (a, b) = (Node::start(&redis, "a"), Node::start(&redis, "b"));
    let _publisher = publish(&a, "live/cam1");
    wait_live(&a, "live/cam1");
    let dir = TempDir::new("cluster");
    let out = dir.join("b.ts");
    let url = b.sluice.srt_url("live/cam1", "");
    let playing = {
        let out = out.clone();
        std::thread::spawn(move || record_srt(&url, 10, &out))
    };
    b.sluice.wait_metric(
        "sluice_cluster_edge_pulls",
        |v| v == Some(1.0),
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_secs(1));

    // Redis goes away for longer than the lease. Meanwhile live/cam2 is
    // published on A, then on B: both go on node-locally.
    redis.stop();
    let _cam2_a = publish(&a, "live/cam2");
    wait_live(&a, "live/cam2");
    let _cam2_b = publish(&b, "live/cam2");
    wait_live(&b, "live/cam2");
    std::thread::sleep(LEASE * 2 + Duration::from_secs(1));
    let state = a.cluster_state();
    assert_eq!(state["redis"], "unreachable", "{state}");
    assert_eq!(state["claims"], 2, "{state}");
    assert_eq!(
        state["claims_pending"], 1,
        "live/cam2 started without redis: {state}"
    );
    assert!(
        a.sluice.stream("live/cam1").is_some(),
        "the stream stopped without redis"
    );
    assert!(a.sluice.metric_or_zero("sluice_cluster_redis_errors_total") >= 1.0);
    playing.join().expect("player");
    assert!(
        media_seconds(&out) >= 9.0,
        "the edge player got {} s of 10",
        media_seconds(&out)
    );
    assert_clean(&out, "B player through the redis outage");

    // Redis is back, empty: the claim is written again.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !redis
        .cli(&["GET", "sluice:stream:live/cam1"])
        .contains("\"node\":\"a\"")
    {
        assert!(Instant::now() < deadline, "the claim was not written again");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(a.cluster_state()["redis"], "ok");
    // The conflict found then stops the newer live/cam2 (B's); A's keeps
    // the path.
    let conflict = b
        .sluice
        .wait_log_fields(&[("reason", "cluster_conflict")], Duration::from_secs(10));
    assert!(conflict.to_string().contains("live/cam2"), "{conflict}");
    b.sluice
        .wait_stream_gone("live/cam2", Duration::from_secs(5));
    assert!(
        a.sluice.stream("live/cam2").is_some(),
        "the older live/cam2 stopped too"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !redis
        .cli(&["GET", "sluice:stream:live/cam2"])
        .contains("\"node\":\"a\"")
    {
        assert!(
            Instant::now() < deadline,
            "live/cam2 is not A's in the directory"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // SIGTERM: the claim goes at once, while the stream drains on A.
    a.signal("-TERM");
    let sent = Instant::now();
    while redis.cli(&["EXISTS", "sluice:stream:live/cam1"]) != "0" {
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "the claim outlived SIGTERM by a second"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // So the encoder may move to B: B's edge stream of A's ends (the
    // directory no longer names A) and B takes the publish.
    let _publisher_b = publish_until_live(&b, "live/cam1", LEASE + Duration::from_secs(10));
    let claim: Value =
        serde_json::from_str(&redis.cli(&["GET", "sluice:stream:live/cam1"])).unwrap();
    assert_eq!(claim["node"], "b", "{claim}");
}

/// A transcoded rendition plays through an edge too, pulled on its own
/// when a player first asks for it while the source is already pulled.
#[test]
fn a_rendition_is_pulled_when_an_edge_player_first_asks_for_it() {
    let redis = Redis::start();
    let apps = "[apps.tv]\n[[apps.tv.renditions]]\nname = \"small\"\nheight = 240\nvideo_bitrate = \"300k\"\n";
    let (a, b) = (
        Node::start_with(&redis, "a", apps),
        Node::start_with(&redis, "b", apps),
    );
    let _publisher = publish(&a, "tv/cam1");
    a.sluice
        .wait_log_fields(&[("message", "stream ready")], Duration::from_secs(20));
    let dir = TempDir::new("cluster");
    let _source = player(&b, "tv/cam1", &dir.join("source.ts"));
    b.sluice.wait_metric(
        "sluice_cluster_edge_pulls",
        |v| v == Some(1.0),
        Duration::from_secs(10),
    );
    let small = dir.join("small.ts");
    record_srt(&b.sluice.srt_url("tv/cam1/small", ""), 4, &small);
    assert_clean(&small, "the 240p rendition through the edge");
    let mut cmd = Command::new(require_program("ffprobe", "ffmpeg"));
    cmd.args([
        "-v",
        "error",
        "-select_streams",
        "v:0",
        "-show_entries",
        "stream=height",
        "-of",
        "csv=p=0",
    ])
    .arg(&small);
    let (_, height, _) = run_to_exit("ffprobe", cmd, Duration::from_secs(20));
    assert!(
        height.split_whitespace().all(|h| h == "240") && !height.trim().is_empty(),
        "heights {height:?}"
    );
    assert_eq!(
        b.sluice
            .metric("sluice_cluster_edge_pulls_total{result=\"started\"}"),
        Some(2.0),
        "one pull per rendition"
    );
}
