//! The consumer side of a BPF ring buffer map (kernel/bpf/ringbuf.c): one page holding
//! the consumer position (ours to write), then, read-only, the producer position's page
//! and the data pages, mapped twice in a row so that a record never wraps.
//!
//! Each record is an 8-byte header (length with the BUSY and DISCARD bits, then a page
//! offset the kernel uses) followed by the data, the whole rounded up to 8 bytes.
//! A record still BUSY (reserved, not yet submitted by a program on another CPU) stops
//! the reading: records are consumed in order only.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const BUSY: u32 = 1 << 31;
const DISCARD: u32 = 1 << 30;
const HEADER: usize = 8;

/// A mapped ring. `size` is a power of two, a multiple of the page size.
#[derive(Debug)]
pub struct Ring {
    _map: OwnedFd,
    page: usize,
    size: usize,
    consumer: *mut u8,
    producer: *mut u8,
}

// SAFETY: the mappings are owned by this value alone and only touched through `&mut
// self` (or atomics); moving it to another thread moves that ownership.
unsafe impl Send for Ring {}

/// What one read of the ring found.
#[derive(Debug, Default)]
pub struct Read {
    /// The records' data, oldest first.
    pub records: Vec<Vec<u8>>,
    /// A record was still being written (BUSY) when reading stopped.
    pub busy: bool,
    /// A record's length was impossible (larger than the ring): nothing after it can
    /// be trusted, and reading stopped there.
    pub corrupt: bool,
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096)
}

fn mmap(fd: i32, len: usize, prot: i32, offset: usize) -> io::Result<*mut u8> {
    let offset = libc::off_t::try_from(offset).map_err(|_| io::Error::other("offset"))?;
    // SAFETY: a fresh shared mapping of the ring map's descriptor, at an address the
    // kernel picks; nothing else refers to that range yet.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            fd,
            offset,
        )
    };
    if p == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(p.cast())
    }
}

impl Ring {
    /// Maps ring map `map` of `size` data bytes.
    pub fn new(map: OwnedFd, size: usize) -> io::Result<Self> {
        let page = page_size();
        let fd = map.as_raw_fd();
        let consumer = mmap(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = match mmap(fd, page + 2 * size, libc::PROT_READ, page) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: unmapping the page mapped just above, not used since.
                unsafe { libc::munmap(consumer.cast(), page) };
                return Err(e);
            }
        };
        Ok(Self {
            _map: map,
            page,
            size,
            consumer,
            producer,
        })
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the consumer page is mapped for the life of `self`, page-aligned (so
        // 8-byte aligned), and the kernel reads this word only atomically.
        unsafe { AtomicU64::from_ptr(self.consumer.cast()) }
    }

    fn producer_pos(&self) -> &AtomicU64 {
        // SAFETY: as `consumer_pos`, on the producer page (read-only to us: loads only).
        unsafe { AtomicU64::from_ptr(self.producer.cast()) }
    }

    /// Takes every record submitted so far, up to `max` of them.
    pub fn read(&mut self, max: usize) -> Read {
        let mut out = Read::default();
        let mask = (self.size - 1) as u64;
        let mut cons = self.consumer_pos().load(Ordering::Acquire);
        let prod = self.producer_pos().load(Ordering::Acquire);
        while cons < prod && out.records.len() < max {
            let at = usize::try_from(cons & mask).unwrap_or(0);
            // SAFETY: `at` < size and the data pages follow the producer page twice
            // over, so the 8-byte header and up to `size` bytes after it are mapped;
            // headers are 8-byte aligned (positions advance by multiples of 8).
            let header = unsafe { self.producer.add(self.page + at) };
            // SAFETY: as above; the kernel writes the length word atomically.
            let len_word = unsafe { AtomicU32::from_ptr(header.cast()) }.load(Ordering::Acquire);
            if len_word & BUSY != 0 {
                out.busy = true;
                break;
            }
            let len = usize::try_from(len_word & !(BUSY | DISCARD)).unwrap_or(usize::MAX);
            if len > self.size - HEADER {
                out.corrupt = true;
                break;
            }
            if len_word & DISCARD == 0 {
                // SAFETY: `len` ≤ size − 8 bytes after the header lie within the double
                // mapping (see above), submitted and no longer written by the kernel.
                let data = unsafe { std::slice::from_raw_parts(header.add(HEADER), len) };
                out.records.push(data.to_vec());
            }
            cons += ((len + HEADER).next_multiple_of(8)) as u64;
            self.consumer_pos().store(cons, Ordering::Release);
        }
        out
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmapping the two ranges mapped in `new`, which nothing refers to
        // beyond `self`.
        unsafe {
            libc::munmap(self.consumer.cast(), self.page);
            libc::munmap(self.producer.cast(), self.page + 2 * self.size);
        }
    }
}
