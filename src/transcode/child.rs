//! Spawning FFmpeg so that it can never outlive its stream or sluice:
//! its own process group (a signal reaches FFmpeg and anything it starts),
//! a parent-death signal (SIGKILL when sluice dies, even by SIGKILL), and one
//! inherited pipe per rendition at fds 3, 4, ... for `pipe:N` outputs.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::net::unix::pipe;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

/// First fd of the output pipes in the child.
pub const FIRST_OUTPUT_FD: i32 = 3;

/// A running FFmpeg and its pipes.
pub struct Spawned {
    pub child: Child,
    pub pid: i32,
    pub stdin: ChildStdin,
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
    /// Read ends of the rendition outputs, in order.
    pub outputs: Vec<pipe::Receiver>,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A close-on-exec pipe: (read, write).
fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both are fresh descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Duplicate `fd` to a close-on-exec descriptor numbered at least `min`.
fn dup_above(fd: &OwnedFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on a descriptor we own; the result is a new one we own.
    let n = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) })?;
    // SAFETY: n is a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Start `program args` with stdin, stdout and stderr piped and `outputs`
/// extra pipes. Must be called from a thread that lives as long as the
/// child should (a runtime worker thread): the parent-death signal fires
/// when the forking thread exits.
pub fn spawn(program: &Path, args: &[String], outputs: usize) -> io::Result<Spawned> {
    let mut reads = Vec::with_capacity(outputs);
    let mut writes = Vec::with_capacity(outputs);
    let targets_end = FIRST_OUTPUT_FD + outputs as i32;
    for _ in 0..outputs {
        let (r, w) = pipe_pair()?;
        // Above every target fd, so no dup2 below clobbers another source.
        writes.push(dup_above(&w, targets_end)?);
        drop(w);
        reads.push(r);
    }
    let raw_writes: Vec<RawFd> = writes.iter().map(|w| w.as_raw_fd()).collect();
    // SAFETY: getpid is always safe.
    let parent = unsafe { libc::getpid() };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only
    // calls async-signal-safe functions (dup2, prctl, getppid, _exit) on
    // values computed before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for (i, &fd) in raw_writes.iter().enumerate() {
                // dup2 clears close-on-exec on the new descriptor.
                cvt(libc::dup2(fd, FIRST_OUTPUT_FD + i as i32))?;
            }
            cvt(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ))?;
            // sluice died between fork and prctl: nobody would reap us.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    // Our copies of the write ends must close, or the readers never see EOF.
    drop(writes);
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(io::Error::other("child stdio was not piped"));
    };
    let outputs = reads
        .into_iter()
        .map(pipe::Receiver::from_owned_fd)
        .collect::<io::Result<Vec<_>>>()?;
    Ok(Spawned {
        child,
        pid,
        stdin,
        stdout,
        stderr,
        outputs,
    })
}

/// Send `sig` to the whole process group led by `pid`.
pub fn signal_group(pid: i32, sig: libc::c_int) {
    if pid > 0 {
        // SAFETY: kill has no memory effects; a stale group just gives ESRCH.
        unsafe {
            libc::kill(-pid, sig);
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`; always reaps. Returns the exit
/// status when one was collected.
pub async fn terminate(
    child: &mut Child,
    pid: i32,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        // Already gone; still clean up anything left in its group.
        signal_group(pid, libc::SIGKILL);
        return Some(st);
    }
    signal_group(pid, libc::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(r) => {
            signal_group(pid, libc::SIGKILL);
            r.ok()
        }
        Err(_) => {
            signal_group(pid, libc::SIGKILL);
            let _ = child.start_kill();
            child.wait().await.ok()
        }
    }
}

/// How a child ended, for logs and the `code` metric label.
pub fn describe_exit(st: &std::process::ExitStatus) -> (String, String) {
    use std::os::unix::process::ExitStatusExt as _;
    match (st.code(), st.signal()) {
        (Some(c), _) => (c.to_string(), format!("exited with code {c}")),
        (None, Some(s)) => (format!("signal_{s}"), format!("was killed by signal {s}")),
        _ => ("unknown".into(), "ended".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn outputs_arrive_on_inherited_pipes_and_the_group_is_killed() {
        // Each pipe gets its own text; then the shell sleeps until killed.
        let script = "echo three >&3; echo four >&4; exec 3>&- 4>&-; exec sleep 30";
        let mut s = spawn(Path::new("sh"), &["-c".into(), script.into()], 2).unwrap();
        let mut got = Vec::new();
        for out in &mut s.outputs {
            let mut text = String::new();
            out.read_to_string(&mut text).await.unwrap();
            got.push(text);
        }
        assert_eq!(got, ["three\n", "four\n"]);
        let st = terminate(&mut s.child, s.pid, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(describe_exit(&st).0, "signal_15");
    }

    #[tokio::test]
    async fn a_child_ignoring_sigterm_is_killed_after_the_grace_period() {
        let mut s = spawn(
            Path::new("sh"),
            &[
                "-c".into(),
                "trap '' TERM; while :; do sleep 0.05; done".into(),
            ],
            0,
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = std::time::Instant::now();
        let st = terminate(&mut s.child, s.pid, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(describe_exit(&st).0, "signal_9");
        assert!(t.elapsed() < Duration::from_secs(2));
        // The group leader is reaped: no zombie is left behind.
        // SAFETY: kill with signal 0 only checks existence.
        assert_eq!(unsafe { libc::kill(s.pid, 0) }, -1);
    }

    #[tokio::test]
    async fn a_missing_program_is_not_found() {
        let e = spawn(Path::new("/nonexistent/ffmpeg"), &[], 1)
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
