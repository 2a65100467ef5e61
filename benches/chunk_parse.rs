//! Chunk-stream parsing throughput and allocations per message, on a real
//! publish recorded from ffmpeg (client-to-server bytes after the handshake).
//!
//! Run: `cargo bench --bench chunk_parse`. Besides criterion's timings it
//! prints the heap allocations made per media message in steady state.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::rtmp::proto::chunk::{ChunkDecoder, ChunkEncoder, ChunkLimits};
use sluice::rtmp::proto::handshake::PACKET_SIZE;
use sluice::rtmp::proto::{Event, Limits, Session};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CAPTURE: &[u8] = include_bytes!("../tests/fixtures/ffmpeg5.1-x264-aac-publish.rtmp");

fn chunk_stream() -> &'static [u8] {
    &CAPTURE[1 + 2 * PACKET_SIZE..]
}

/// Decode every message once; returns (messages, media messages).
fn decode_all(input: &mut BytesMut) -> (u64, u64) {
    let mut dec = ChunkDecoder::new(ChunkLimits {
        max_message_size: 8 << 20,
        max_chunk_streams: 64,
    });
    let (mut n, mut media) = (0, 0);
    while let Ok(Some(m)) = dec.decode(input) {
        n += 1;
        if m.type_id == 8 || m.type_id == 9 {
            media += 1;
        }
    }
    (n, media)
}

/// The recorded messages re-chunked at the RTMP default of 128 bytes (what
/// librtmp-based encoders send): many more chunk headers per byte.
fn rechunked_128() -> (Vec<u8>, u64) {
    let mut input = BytesMut::from(chunk_stream());
    let mut dec = ChunkDecoder::new(ChunkLimits {
        max_message_size: 8 << 20,
        max_chunk_streams: 64,
    });
    let mut enc = ChunkEncoder::new();
    let mut out = BytesMut::new();
    let mut chunks = 0u64;
    while let Ok(Some(m)) = dec.decode(&mut input) {
        if m.type_id == 1 {
            continue; // stay at 128
        }
        chunks += (m.payload.len() as u64).div_ceil(128).max(1);
        enc.write(
            &mut out,
            m.csid,
            m.timestamp,
            m.type_id,
            m.stream_id,
            &m.payload,
        );
    }
    (out.to_vec(), chunks)
}

/// The whole session (chunks, AMF0 commands, events), as the server runs it.
fn run_session(data: &[u8]) -> u64 {
    let now = Instant::now();
    let mut s = Session::new(Limits::default(), now, 1);
    let mut media = 0;
    for piece in CAPTURE[..1 + 2 * PACKET_SIZE]
        .chunks(64 * 1024)
        .chain(data.chunks(64 * 1024))
    {
        if s.handle_input(now, piece).is_err() {
            break;
        }
        while let Some(ev) = s.poll_event() {
            match ev {
                Event::Connect { .. } => s.accept_connect().unwrap(),
                Event::Publish { .. } => s.accept_publish().unwrap(),
                Event::Media { .. } => media += 1,
                _ => {}
            }
        }
        let _ = s.take_transmit();
    }
    media
}

fn report_allocations(label: &str, data: &[u8], chunks: u64) {
    // Warm up, then count one pass.
    let mut input = BytesMut::from(data);
    decode_all(&mut input);
    // Hold every message, as a GOP cache would, so buffers cannot be
    // recycled behind our back: this is the worst case for allocations.
    let mut input = BytesMut::from(data);
    let mut kept = Vec::with_capacity(4096);
    let mut dec = ChunkDecoder::new(ChunkLimits {
        max_message_size: 8 << 20,
        max_chunk_streams: 64,
    });
    let before = ALLOCS.load(Ordering::Relaxed);
    while let Ok(Some(m)) = dec.decode(&mut input) {
        kept.push(m);
    }
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    let messages = kept.len();
    let media = kept
        .iter()
        .filter(|m| m.type_id == 8 || m.type_id == 9)
        .count();
    println!(
        "{label}: {} bytes, {messages} messages ({media} audio/video), {chunks} chunks, \
         {allocs} allocations = {:.3} per message, {:.4} per chunk",
        data.len(),
        allocs as f64 / messages as f64,
        allocs as f64 / chunks as f64
    );
}

fn bench(c: &mut Criterion) {
    let data = chunk_stream();
    // ffmpeg announces chunk size 4096 and most of its messages fit one chunk.
    let recorded_chunks = {
        let mut input = BytesMut::from(data);
        let mut dec = ChunkDecoder::new(ChunkLimits {
            max_message_size: 8 << 20,
            max_chunk_streams: 64,
        });
        let mut n = 0u64;
        while let Ok(Some(m)) = dec.decode(&mut input) {
            n += (m.payload.len() as u64)
                .div_ceil(dec.chunk_size() as u64)
                .max(1);
        }
        n
    };
    report_allocations("recorded (chunk size 4096)", data, recorded_chunks);
    let (small, small_chunks) = rechunked_128();
    report_allocations("re-chunked at 128", &small, small_chunks);
    let mut g = c.benchmark_group("rtmp");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("chunk_decoder", |b| {
        b.iter_batched(
            || BytesMut::from(data),
            |mut input| decode_all(&mut input),
            criterion::BatchSize::LargeInput,
        )
    });
    g.bench_function("session", |b| b.iter(|| run_session(data)));
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_function("chunk_decoder_128", |b| {
        b.iter_batched(
            || BytesMut::from(&small[..]),
            |mut input| decode_all(&mut input),
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
