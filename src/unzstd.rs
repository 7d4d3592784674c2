//! One reusable zstd decompression context per thread, shared by every reader that
//! decodes zstd (the safe's blocks, btrfs extents).

thread_local! {
    /// One zstd context per thread: creating one per block cost several percent of a
    /// cold metadata walk (safe blocks) or of a tar of a zstd-compressed btrfs tree.
    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's reusable zstd decompressor.
pub fn with_decompressor<T>(
    f: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> std::io::Result<T>,
) -> std::io::Result<T> {
    DCTX.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(zstd::bulk::Decompressor::new()?);
        }
        f(c.as_mut().expect("set above"))
    })
}
