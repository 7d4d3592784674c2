//! Copies of one volume (the current legs of an LVM RAID1 LV, the current members of
//! an md RAID1 array), read as md and dm-raid read them: from the first, and a read
//! that fails there (sectors its backup could not read, a damaged block) from the
//! others, with a warning naming the failure.

use std::io;
use std::sync::Arc;

use crate::readat::ReadAt;

/// A volume kept on several copies of the same bytes.
pub struct Mirrored {
    /// The copy read first, then the others in turn.
    legs: Vec<Arc<dyn ReadAt>>,
    /// For the log: what the copies are of.
    what: String,
}

impl Mirrored {
    /// `legs[0]` read first; `what` names the volume in the log. One leg is itself.
    pub fn over(what: String, legs: Vec<Arc<dyn ReadAt>>) -> Arc<dyn ReadAt> {
        match <[_; 1]>::try_from(legs) {
            Ok([one]) => one,
            Err(legs) => Arc::new(Mirrored { legs, what }),
        }
    }
}

/// Piece sizes a read failing on every copy as a whole is retried in, each piece
/// from whichever copy reads it: copies failing in different places still give it.
const PIECES: [u64; 2] = [4096, 512];

impl Mirrored {
    /// Fills `buf` from the first copy that reads it: `None` when that is the first
    /// copy, else the first copy's error; the first copy's error when none does.
    fn read_any(&self, offset: u64, buf: &mut [u8]) -> io::Result<Option<io::Error>> {
        let mut first = None;
        for leg in &self.legs {
            if leg.size() < offset + buf.len() as u64 {
                continue;
            }
            match leg.read_exact_at(offset, buf) {
                Ok(()) => return Ok(first),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        Err(first.unwrap_or_else(|| io::Error::other("no copy is large enough")))
    }
}

impl ReadAt for Mirrored {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.size();
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min((size - offset) as usize);
        // The first copy's failure, when another copy served instead.
        let mut fell_back = None;
        crate::readat::read_in_pieces(
            offset,
            &mut buf[..n],
            &PIECES,
            &mut |at, piece| {
                if let Some(e) = self.read_any(at, piece)? {
                    fell_back.get_or_insert(e);
                }
                Ok(())
            },
            &|_| true,
            &mut |_, _, e| Err(e),
        )?;
        if let Some(e) = fell_back {
            tracing::warn!("{}: {e}; read from the other copies instead", self.what);
        }
        Ok(n)
    }

    fn size(&self) -> u64 {
        self.legs[0].size()
    }

    fn prefetch(&self, ranges: &[(u64, u64)]) {
        self.legs[0].prefetch(ranges)
    }

    fn prefetches(&self) -> bool {
        self.legs[0].prefetches()
    }

    fn data_from(&self, offset: u64, end: u64) -> Option<io::Result<Option<u64>>> {
        self.legs[0].data_from(offset, end)
    }

    fn hole_from(&self, offset: u64, end: u64) -> Option<io::Result<u64>> {
        self.legs[0].hole_from(offset, end)
    }

    fn allocated(&self) -> Option<u64> {
        self.legs[0].allocated()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readat::MemReader;

    /// Fails reads touching `bad`, else reads `data`.
    struct Failing(Vec<u8>, (u64, u64));

    impl ReadAt for Failing {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
            let (b, l) = self.1;
            if offset < b + l && b < offset + buf.len() as u64 {
                return Err(io::Error::other("unreadable"));
            }
            MemReader(self.0.clone()).read_at(offset, buf)
        }
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
    }

    #[test]
    fn a_failing_read_comes_from_another_copy() {
        let data: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
        let first: Arc<dyn ReadAt> = Arc::new(Failing(data.clone(), (1000, 10)));
        let second: Arc<dyn ReadAt> = Arc::new(Failing(data.clone(), (5000, 10)));
        let m = Mirrored::over("test".into(), vec![first, second]);
        let mut buf = vec![0u8; 8192];
        m.read_exact_at(0, &mut buf).unwrap();
        assert_eq!(buf, data);
        // Failing on both copies: the first copy's error.
        let both: Arc<dyn ReadAt> = Arc::new(Failing(data.clone(), (1000, 10)));
        let m = Mirrored::over(
            "test".into(),
            vec![both.clone(), Arc::new(Failing(data, (1005, 1)))],
        );
        assert!(m.read_exact_at(0, &mut buf).is_err());
        assert!(m.read_exact_at(2000, &mut buf[..100]).is_ok());
    }
}
