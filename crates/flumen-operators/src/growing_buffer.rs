//! A buffer that grows only at its end and lends what it holds to Arrow
//! arrays without copying it. A string dictionary's values array must be
//! rebuilt whenever a batch brings new strings; copying every string each
//! time (megabytes a batch while a dictionary of random text fills up) cost
//! q9 a tenth of its time. Here an array views the written prefix of a
//! region; later pushes write only past every view's end, and a region that
//! must grow is copied once into one twice its size, the old region living
//! on for as long as arrays view it.

use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::Arc;

use arrow::buffer::{Buffer, ScalarBuffer};
use arrow::datatypes::ArrowNativeType;

/// Alignment of a region: that of Arrow's own buffers.
const ALIGN: usize = 64;

/// One allocation, freed when the buffer and every array viewing it are gone.
struct Region {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: a region is written only by the one `GrowingBuffer` that owns it
// (through `&mut self`), at bytes past every view it lent; arrays on other
// threads read only the bytes of their views, written before the views were
// made. No byte is read and written concurrently.
unsafe impl Send for Region {}
// SAFETY: as for `Send`: shared access reads written bytes only.
unsafe impl Sync for Region {}

impl Region {
    /// A region of `bytes` bytes (at least one, so that it is a real
    /// allocation).
    fn new(bytes: usize) -> Self {
        // Only a size past `isize::MAX` fails, which no buffer reaches: a
        // dictionary holds at most a few MiB of strings (and a `Vec` would
        // panic alike).
        let layout = Layout::from_size_align(bytes.max(1), ALIGN)
            .expect("a dictionary's buffer fits in memory");
        // SAFETY: the layout's size is at least 1.
        let ptr = unsafe { alloc(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            handle_alloc_error(layout)
        };
        Region { ptr, layout }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `Region::new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Values of type `T`, appended at the end only, viewable as Arrow buffers.
pub(crate) struct GrowingBuffer<T> {
    region: Arc<Region>,
    /// Values written.
    len: usize,
    /// Values the region holds.
    capacity: usize,
    _values: PhantomData<T>,
}

impl<T: ArrowNativeType> GrowingBuffer<T> {
    /// An empty buffer.
    pub(crate) fn new() -> Self {
        Self::with_capacity(0)
    }

    fn with_capacity(capacity: usize) -> Self {
        GrowingBuffer {
            region: Arc::new(Region::new(capacity * size_of::<T>())),
            len: 0,
            capacity,
            _values: PhantomData,
        }
    }

    /// Appends `values`, moving to a region twice as large when this one is
    /// full (or one just large enough, when that is more).
    pub(crate) fn extend_from_slice(&mut self, values: &[T]) {
        if self.len + values.len() > self.capacity {
            let mut larger = Self::with_capacity((2 * self.capacity).max(self.len + values.len()));
            larger.write(self.as_slice());
            *self = larger;
        }
        self.write(values);
    }

    /// Appends `values`, which fit.
    fn write(&mut self, values: &[T]) {
        debug_assert!(self.len + values.len() <= self.capacity);
        // SAFETY: the region holds `capacity` values, and `len + values.len()`
        // of them fit; the bytes written lie past every lent view, which
        // covers at most the first `len` values (`truncate` moves to a new
        // region when it would let a push overwrite a view).
        unsafe {
            let end = self.region.ptr.as_ptr().cast::<T>().add(self.len);
            std::ptr::copy_nonoverlapping(values.as_ptr(), end, values.len());
        }
        self.len += values.len();
    }

    /// Appends one value.
    pub(crate) fn push(&mut self, value: T) {
        self.extend_from_slice(std::slice::from_ref(&value));
    }

    /// Keeps the first `len` values. Arrays may view the values dropped, so
    /// the kept ones move to a new region rather than be overwritten later.
    pub(crate) fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        let mut kept = Self::with_capacity(self.capacity);
        kept.write(&self.as_slice()[..len]);
        *self = kept;
    }

    /// The values written.
    pub(crate) fn as_slice(&self) -> &[T] {
        // SAFETY: the first `len` values were written and are never written
        // again; the region is aligned for `T`.
        unsafe { std::slice::from_raw_parts(self.region.ptr.as_ptr().cast::<T>(), self.len) }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The values written, as an Arrow buffer sharing this region.
    pub(crate) fn to_scalar_buffer(&self) -> ScalarBuffer<T> {
        let bytes = self.len * size_of::<T>();
        let owner: Arc<dyn arrow::alloc::Allocation> = self.region.clone();
        // SAFETY: the region's first `bytes` bytes are written, never written
        // again, and live as long as `owner`.
        let buffer = unsafe { Buffer::from_custom_allocation(self.region.ptr, bytes, owner) };
        ScalarBuffer::new(buffer, 0, self.len)
    }

    /// Bytes allocated.
    pub(crate) fn allocation_size(&self) -> usize {
        self.capacity * size_of::<T>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_keep_their_values_while_the_buffer_grows_and_truncates() {
        let mut buffer = GrowingBuffer::<i32>::new();
        let mut views = Vec::new();
        for i in 0..1000 {
            buffer.push(i);
            if i % 97 == 0 {
                views.push(buffer.to_scalar_buffer());
            }
        }
        assert_eq!(buffer.as_slice(), (0..1000).collect::<Vec<_>>());
        buffer.truncate(10);
        buffer.extend_from_slice(&[-1; 500]);
        for view in &views {
            let want: Vec<i32> = (0..view.len() as i32).collect();
            assert_eq!(
                &view[..],
                want,
                "a view changed after pushes and a truncate"
            );
        }
        let mut want: Vec<i32> = (0..10).collect();
        want.extend([-1; 500]);
        assert_eq!(&buffer.to_scalar_buffer()[..], want);
        assert!(buffer.allocation_size() >= 510 * 4);
    }
}
