//! Streams other nodes hold, as the SRT listener asks about them: the
//! cluster (`cluster::edge`) implements it; without `[cluster]` there is
//! none and the listener answers 1404 for what is not here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::StreamPath;

pub type RemoteFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pub trait Remote: Send + Sync {
    /// Make `rendition` of `path` playable on this node from the node
    /// that holds it: `Ok` once its ring has a keyframe (or the path is
    /// published here after all); `Err(why)` when no node holds it or the
    /// owner does not answer in time.
    fn fetch(
        self: Arc<Self>,
        path: StreamPath,
        rendition: String,
    ) -> RemoteFuture<Result<(), String>>;

    /// The other node that holds `path` ("node A"), if any;
    /// `None` also when the directory cannot be asked.
    fn held_elsewhere(self: Arc<Self>, path: StreamPath) -> RemoteFuture<Option<String>>;

    /// Whether `rendition` of `path` is pulled to this node and playing:
    /// a player of it may be accepted without [`Remote::fetch`].
    fn playing_here(&self, path: &StreamPath, rendition: &str) -> bool;

    /// The longest [`Remote::fetch`] or [`Remote::held_elsewhere`] takes.
    fn wait_limit(&self) -> std::time::Duration;

    /// Whether `token` (streamid `ct=`) lets node `node` pull `path`.
    fn authorizes_pull(&self, token: &str, path: &str, node: &str) -> bool;
}
