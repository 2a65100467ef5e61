//! Where segments begin and end: the source rendition's TS chunks in, the
//! file operations out. Sans-IO: the caller says how full the queue to the
//! disk is, and the core decides. A segment opens on a keyframe chunk
//! (PAT, PMT, parameter sets and the IDR: decodable on its own) and is cut
//! at the first keyframe at least the segment length (in media time, the
//! chunks' DTS) after its start. When the queue to the disk has no room,
//! the rest of the segment is dropped and recording resumes with a new
//! segment at a keyframe once there is room: a slow disk loses whole
//! segments, never the middle of one.

use std::time::Duration;

use bytes::Bytes;

use crate::ts::TsChunk;

/// What the writer is told to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Start a new file; its first chunk follows.
    Open { dts_90k: u64 },
    /// Append whole TS packets to the open file.
    Write(Bytes),
    /// Close (and fsync) the open file. `complete` is false when the rest
    /// of the segment was dropped.
    Close { duration_90k: u64, complete: bool },
    /// A segment's worth of media was not recorded (the queue was full).
    Dropped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first keyframe.
    Idle,
    Open {
        start: u64,
        last: u64,
    },
    /// Media is being dropped since `since` (90 kHz), waiting for a
    /// keyframe and room in the queue.
    Dropping {
        since: u64,
    },
}

/// See the module docs. Call [`Segmenter::push`] for every chunk read
/// from the ring, [`Segmenter::interrupt`] when chunks were lost before
/// the recorder saw them, [`Segmenter::finish`] at the end.
#[derive(Debug)]
pub struct Segmenter {
    len_90k: u64,
    max_queue: usize,
    state: State,
}

impl Segmenter {
    /// Segments of at least `segment` (cut at keyframes); at most
    /// `max_queue` bytes waiting for the disk.
    pub fn new(segment: Duration, max_queue: usize) -> Segmenter {
        Segmenter {
            len_90k: (segment.as_millis() as u64).saturating_mul(90),
            max_queue,
            state: State::Idle,
        }
    }

    /// Whether a file is open.
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open { .. })
    }

    /// One chunk, with `queued` bytes waiting for the disk now.
    pub fn push(&mut self, chunk: &TsChunk, queued: usize, out: &mut Vec<Step>) {
        let room = queued.saturating_add(chunk.data.len()) <= self.max_queue;
        let dts = chunk.dts_90k;
        match self.state {
            State::Open { start, last } => {
                if chunk.keyframe && dts.saturating_sub(start) >= self.len_90k {
                    out.push(Step::Close {
                        duration_90k: dts.saturating_sub(start),
                        complete: true,
                    });
                    self.start_or_drop(chunk, room, out);
                } else if room {
                    out.push(Step::Write(chunk.data.clone()));
                    self.state = State::Open {
                        start,
                        last: last.max(dts),
                    };
                } else {
                    out.push(Step::Close {
                        duration_90k: last.saturating_sub(start),
                        complete: false,
                    });
                    out.push(Step::Dropped);
                    self.state = State::Dropping { since: dts };
                }
            }
            State::Idle if chunk.keyframe => self.start_or_drop(chunk, room, out),
            State::Dropping { since } if chunk.keyframe => {
                if room {
                    self.open(chunk, out);
                } else if dts.saturating_sub(since) >= self.len_90k {
                    // Another whole segment's worth went by without room.
                    out.push(Step::Dropped);
                    self.state = State::Dropping { since: dts };
                }
            }
            State::Idle | State::Dropping { .. } => {}
        }
    }

    /// Chunks were lost before the recorder read them (it fell out of the
    /// ring): the open segment ends there, the next starts at a keyframe.
    pub fn interrupt(&mut self, out: &mut Vec<Step>) {
        if let State::Open { start, last } = self.state {
            out.push(Step::Close {
                duration_90k: last.saturating_sub(start),
                complete: false,
            });
            out.push(Step::Dropped);
            self.state = State::Dropping { since: last };
        }
    }

    /// The stream ended: close the open segment.
    pub fn finish(&mut self, out: &mut Vec<Step>) {
        if let State::Open { start, last } = self.state {
            out.push(Step::Close {
                duration_90k: last.saturating_sub(start),
                complete: true,
            });
        }
        self.state = State::Idle;
    }

    fn start_or_drop(&mut self, chunk: &TsChunk, room: bool, out: &mut Vec<Step>) {
        if room {
            self.open(chunk, out);
        } else {
            out.push(Step::Dropped);
            self.state = State::Dropping {
                since: chunk.dts_90k,
            };
        }
    }

    fn open(&mut self, chunk: &TsChunk, out: &mut Vec<Step>) {
        out.push(Step::Open {
            dts_90k: chunk.dts_90k,
        });
        out.push(Step::Write(chunk.data.clone()));
        self.state = State::Open {
            start: chunk.dts_90k,
            last: chunk.dts_90k,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 90_000;

    fn chunk(dts_90k: u64, keyframe: bool) -> TsChunk {
        TsChunk {
            data: Bytes::from(vec![0x47; 188]),
            keyframe,
            dts_90k,
            origin: None,
        }
    }

    /// 10 chunks a second, a keyframe every `gop` seconds, from `from` s.
    fn run(seg: &mut Segmenter, from: u64, secs: u64, gop: u64, queued: usize) -> Vec<Step> {
        let mut out = Vec::new();
        for i in from * 10..(from + secs) * 10 {
            let c = chunk(i * SEC / 10, i % (gop * 10) == 0);
            seg.push(&c, queued, &mut out);
        }
        out
    }

    fn summary(steps: &[Step]) -> Vec<String> {
        let mut v = Vec::new();
        let mut writes = 0;
        for s in steps {
            match s {
                Step::Write(_) => writes += 1,
                other => {
                    if writes > 0 {
                        v.push(format!("w{writes}"));
                        writes = 0;
                    }
                    v.push(match other {
                        Step::Open { dts_90k } => format!("open@{}", dts_90k / SEC),
                        Step::Close {
                            duration_90k,
                            complete,
                        } => format!(
                            "close{}{}",
                            duration_90k / SEC,
                            if *complete { "" } else { "!" }
                        ),
                        Step::Dropped => "dropped".into(),
                        Step::Write(_) => unreachable!(),
                    });
                }
            }
        }
        if writes > 0 {
            v.push(format!("w{writes}"));
        }
        v
    }

    #[test]
    fn segments_start_at_keyframes_and_last_at_least_the_segment_length() {
        let mut seg = Segmenter::new(Duration::from_secs(3), 1 << 20);
        let mut out = vec![];
        // Three non-keyframe chunks before the first keyframe are skipped.
        seg.push(&chunk(0, false), 0, &mut out);
        assert!(out.is_empty());
        let mut steps = run(&mut seg, 1, 10, 2, 0);
        seg.finish(&mut steps);
        // Keyframes at 2, 4, 6, 8, 10 s: cuts at the first one >= 3 s on.
        assert_eq!(
            summary(&steps),
            ["open@2", "w40", "close4", "open@6", "w40", "close4", "open@10", "w10", "close0"]
        );
    }

    #[test]
    fn a_full_queue_drops_the_rest_of_the_segment_and_resumes_at_a_keyframe() {
        let mut seg = Segmenter::new(Duration::from_secs(2), 10_000);
        let mut steps = run(&mut seg, 0, 3, 1, 0); // open@0, cut @2
        steps.extend(run(&mut seg, 3, 1, 1, 10_000)); // full at 3.0 s
        steps.extend(run(&mut seg, 4, 3, 1, 10_000)); // still full at 4, 5, 6
        steps.extend(run(&mut seg, 7, 2, 1, 0)); // room again at 7 s
        assert_eq!(
            summary(&steps),
            [
                "open@0", "w20", "close2", "open@2", "w10", "close0!", "dropped",
                // 3 s dropped; 5 s is another segment's worth without room.
                "dropped", "open@7", "w20"
            ]
        );
        assert!(seg.is_open());
    }

    #[test]
    fn lost_chunks_end_the_segment_and_the_next_starts_at_a_keyframe() {
        let mut seg = Segmenter::new(Duration::from_secs(60), 1 << 20);
        let mut steps = run(&mut seg, 0, 2, 1, 0);
        seg.interrupt(&mut steps);
        // A non-keyframe chunk after the loss is not written.
        seg.push(&chunk(2 * SEC + 1, false), 0, &mut steps);
        steps.extend(run(&mut seg, 3, 1, 1, 0));
        assert_eq!(
            summary(&steps),
            ["open@0", "w20", "close1!", "dropped", "open@3", "w10"]
        );
    }

    #[test]
    fn a_keyframe_without_room_at_the_start_is_not_a_file() {
        let mut seg = Segmenter::new(Duration::from_secs(1), 1000);
        let mut out = Vec::new();
        seg.push(&chunk(0, true), 900, &mut out);
        assert_eq!(summary(&out), ["dropped"]);
        assert!(!seg.is_open());
        let mut seg = Segmenter::new(Duration::from_secs(1), 1000);
        let mut out = Vec::new();
        seg.push(&chunk(0, true), 0, &mut out);
        assert_eq!(summary(&out), ["open@0", "w1"]);
        let mut out = Vec::new();
        seg.push(&chunk(SEC, true), 850, &mut out);
        assert_eq!(summary(&out), ["close1", "dropped"]);
        assert!(!seg.is_open());
    }
}
