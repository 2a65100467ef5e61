//! A real `redis-server` (Debian's package, installed by `scripts/test`)
//! on a free loopback port, owned by a guard: started, stopped and started
//! again on the same port, in memory only.

use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use super::process::{require_program, run_to_exit, ChildGuard};

pub struct Redis {
    pub port: u16,
    child: Option<ChildGuard>,
}

/// A loopback TCP port free now.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free TCP port")
}

/// A loopback UDP port free now.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

impl Redis {
    pub fn start() -> Redis {
        let mut r = Redis {
            port: free_tcp_port(),
            child: None,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Start it (again) on its port; returns once it accepts connections.
    pub fn restart(&mut self) {
        let mut cmd = Command::new(require_program("redis-server", "redis-server"));
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"]);
        self.child = Some(ChildGuard::spawn("redis-server", cmd));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop it at once (a crash or an outage, as the nodes see it).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }

    /// `redis-cli ARGS` against it; its stdout, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(require_program("redis-cli", "redis-tools"));
        cmd.args(["-p", &self.port.to_string()]).args(args);
        let (_, out, _) = run_to_exit("redis-cli", cmd, Duration::from_secs(10));
        out.trim().to_string()
    }
}
