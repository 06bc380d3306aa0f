//! The Nexmark event generator: event `n` is a person, an auction or a bid by
//! `n % 50`, and its values are a pure function of (seed, n), so any split of
//! the event numbers yields the same rows. Batches are built column by column
//! straight into Arrow buffers, and only the columns a query reads are built.

use std::fmt::Write;
use std::hint::select_unpredictable;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, StringArray, StringBuilder, TimestampMillisecondArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use flumen_state::chunk_copy::{CHUNK, copy_spans};

use super::rng::Rng;

/// Events per generator epoch: 1 person, 3 auctions, 46 bids.
pub const EPOCH: u64 = 50;
const PERSON_END: u64 = 1;
const AUCTION_END: u64 = 4;
/// First person and auction id.
pub const FIRST_ID: i64 = 1000;
/// First auction category; categories are `FIRST_CATEGORY..FIRST_CATEGORY + 5`.
pub const FIRST_CATEGORY: i64 = 10;
const NUM_CATEGORIES: u64 = 5;
const IN_FLIGHT_AUCTIONS: i64 = 100;
const ACTIVE_PEOPLE: i64 = 1000;
const HOT_BLOCK: i64 = 100;
const CHANNELS: usize = 10_000;
/// Event time of event 0: 2026-01-01T00:00:00Z, in nanoseconds.
pub const BASE_TIME_NS: i64 = 1_767_225_600_000_000_000;
const POOL_BYTES: usize = 1 << 16;

const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
const CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
const HOT_PATHS: [&str; 4] = [
    "dir1/dir2/dir3",
    "abc/def/ghi",
    "map/reduce/stream",
    "x/y/z",
];

/// Which of the three tables an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A person registers.
    Person,
    /// An auction opens.
    Auction,
    /// A bid is placed.
    Bid,
}

impl EventKind {
    /// The kind as the `kind` option names it.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Person => "person",
            EventKind::Auction => "auction",
            EventKind::Bid => "bid",
        }
    }

    /// The kind of event number `n`.
    pub fn of_event(n: u64) -> EventKind {
        match n % EPOCH {
            r if r < PERSON_END => EventKind::Person,
            r if r < AUCTION_END => EventKind::Auction,
            _ => EventKind::Bid,
        }
    }

    /// Offsets within an epoch that hold this kind.
    fn offsets(self) -> std::ops::Range<u64> {
        match self {
            EventKind::Person => 0..PERSON_END,
            EventKind::Auction => PERSON_END..AUCTION_END,
            EventKind::Bid => AUCTION_END..EPOCH,
        }
    }

    /// Events of this kind in every epoch of 50.
    pub fn per_epoch(self) -> u64 {
        let r = self.offsets();
        r.end - r.start
    }

    /// The canonical columns of this kind's table.
    pub fn schema(self) -> SchemaRef {
        let ts = || DataType::Timestamp(TimeUnit::Millisecond, None);
        let f = |name: &str, t: DataType| Field::new(name, t, false);
        let fields = match self {
            EventKind::Person => vec![
                f("id", DataType::Int64),
                f("name", DataType::Utf8),
                f("email_address", DataType::Utf8),
                f("credit_card", DataType::Utf8),
                f("city", DataType::Utf8),
                f("state", DataType::Utf8),
                f("date_time", ts()),
                f("extra", DataType::Utf8),
            ],
            EventKind::Auction => vec![
                f("id", DataType::Int64),
                f("item_name", DataType::Utf8),
                f("description", DataType::Utf8),
                f("initial_bid", DataType::Int64),
                f("reserve", DataType::Int64),
                f("date_time", ts()),
                f("expires", ts()),
                f("seller", DataType::Int64),
                f("category", DataType::Int64),
                f("extra", DataType::Utf8),
            ],
            EventKind::Bid => vec![
                f("auction", DataType::Int64),
                f("bidder", DataType::Int64),
                f("price", DataType::Int64),
                f("channel", DataType::Utf8),
                f("url", DataType::Utf8),
                f("date_time", ts()),
                f("extra", DataType::Utf8),
            ],
        };
        Arc::new(Schema::new(fields))
    }
}

/// The generator's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratorConfig {
    /// Events per second of event time.
    pub rate: u64,
    /// Seed of every random choice.
    pub seed: u64,
}

/// Shared, precomputed tables of one generator configuration.
pub struct Generator {
    config: GeneratorConfig,
    /// `POOL_BYTES` of random lower-case text that strings are cut from,
    /// then `BID_EXTRA_CHUNKS` chunks of NUL bytes that no string reaches,
    /// for [`strings_of_spans`] to copy bids' `extra` past its end.
    pool: String,
    /// The names of the 10,000 ordinary channels, then the 4 hot ones, in
    /// one buffer: bids copy them out by index, and a contiguous table
    /// misses the cache less than 10,004 separate strings.
    channel_names: StringTable,
    /// The URL of each channel, likewise.
    channel_urls: StringTable,
    names: Vec<String>,
    /// "0000" to "9999", concatenated.
    digits: String,
}

/// Base-0 id of the newest person at event `n`.
fn last_person(n: u64) -> i64 {
    (n / EPOCH) as i64
}

/// Base-0 id of the newest auction at event `n`.
fn last_auction(n: u64) -> i64 {
    let epoch = (n / EPOCH) as i64;
    let off = n % EPOCH;
    let per = (AUCTION_END - PERSON_END) as i64;
    if off < PERSON_END {
        epoch * per - 1
    } else if off >= AUCTION_END {
        epoch * per + per - 1
    } else {
        epoch * per + (off - PERSON_END) as i64
    }
}

/// A random base-0 id among the newest `window` ids up to `last`, its draw
/// taken from `rng` only when `take` (see [`Rng::below_if`]).
#[inline]
fn recent_id(rng: &mut Rng, last: i64, window: i64, take: bool) -> i64 {
    let min = (last - window + 1).max(0);
    min + rng.below_if((last - min + 1).max(1) as u64, take) as i64
}

/// Log-uniform in `[100, 10^8]`: `round(10^(6u) * 100)`, computed as a
/// power of two, which is cheaper than `powf`.
fn price(rng: &mut Rng) -> i64 {
    price_of(rng.next_f64())
}

/// [`price`] of a uniform draw `u` in `[0, 1)`.
fn price_of(u: f64) -> i64 {
    round_positive((u * 6.0 * std::f64::consts::LOG2_10).exp2() * 100.0)
}

/// `x.round() as i64` for `0 <= x < 2^52` without a call into libm: adding
/// one half is exact there, and the cast truncates.
fn round_positive(x: f64) -> i64 {
    (x + 0.5) as i64
}

/// `(n as f64 * 0.2).round()` in integers: `n / 5` is never a half, so
/// rounding `2n / 10` up from .5 is exact.
fn fifth_rounded(n: u64) -> u64 {
    (n * 2 + 5) / 10
}

/// Length of the `extra` padding that brings an event to `average` bytes.
fn extra_len(rng: &mut Rng, current: usize, average: usize) -> usize {
    if current >= average {
        return 0;
    }
    let desired = average - current;
    let delta = fifth_rounded(desired as u64);
    (desired as u64 - delta + rng.below(2 * delta + 1)) as usize
}

impl Generator {
    /// Precomputes the tables for `config`.
    pub fn new(config: GeneratorConfig) -> Self {
        let mut rng = Rng::for_event(config.seed, u64::MAX);
        let mut pool: String = (0..POOL_BYTES)
            .map(|_| (b'a' + rng.below(26) as u8) as char)
            .collect();
        pool.extend(std::iter::repeat_n('\0', BID_EXTRA_CHUNKS * CHUNK));
        let words = |rng: &mut Rng| {
            let mut w = String::new();
            for i in 0..3 {
                let off = rng.below((POOL_BYTES - 5) as u64) as usize;
                if i > 0 {
                    w.push('/');
                }
                w.push_str(&pool[off..off + 5]);
            }
            w
        };
        let mut channels: Vec<(String, String)> = (0..CHANNELS)
            .map(|i| {
                let path = words(&mut rng);
                let id = (i as u32).reverse_bits();
                (
                    format!("channel-{i}"),
                    format!("https://www.nexmark.com/{path}/item.htm?query=1&channel_id={id}"),
                )
            })
            .collect();
        for (name, path) in HOT_CHANNELS.iter().zip(HOT_PATHS) {
            channels.push((
                name.to_string(),
                format!("https://www.nexmark.com/{path}/item.htm?query=1"),
            ));
        }
        let names = FIRST_NAMES
            .iter()
            .flat_map(|f| LAST_NAMES.iter().map(move |l| format!("{f} {l}")))
            .collect();
        let mut digits = String::with_capacity(40_000);
        for d in 0..10_000 {
            let _ = write!(digits, "{d:04}");
        }
        let (names_of, urls_of): (Vec<String>, Vec<String>) = channels.into_iter().unzip();
        Generator {
            config,
            pool,
            channel_names: StringTable::new(names_of),
            channel_urls: StringTable::new(urls_of),
            names,
            digits,
        }
    }

    /// Event time of event `n`, in nanoseconds since the epoch.
    pub fn timestamp_ns(&self, n: u64) -> i64 {
        let rate = self.config.rate;
        let ns = (n / rate) * 1_000_000_000 + (n % rate) * 1_000_000_000 / rate;
        BASE_TIME_NS + ns as i64
    }

    fn text(&self, rng: &mut Rng, len: usize) -> &str {
        let (start, end) = self.text_span(rng, len);
        &self.pool[start..end]
    }

    /// Where in the pool [`Generator::text`] would cut its string.
    fn text_span(&self, rng: &mut Rng, len: usize) -> (usize, usize) {
        let off = rng.below((POOL_BYTES - len) as u64) as usize;
        (off, off + len)
    }

    /// Builds the `columns` (indices into `kind.schema()`) of every event of
    /// `kind` with an event number in `start..end`.
    pub fn build(&self, kind: EventKind, start: u64, end: u64, columns: &[usize]) -> Vec<ArrayRef> {
        let events = event_numbers(kind, start, end);
        match kind {
            EventKind::Person => self.persons(events, columns),
            EventKind::Auction => self.auctions(events, columns),
            EventKind::Bid => self.bids(events, columns),
        }
    }

    fn persons(
        &self,
        events: impl Iterator<Item = u64> + Clone,
        columns: &[usize],
    ) -> Vec<ArrayRef> {
        let rows = events.clone().count();
        let mut c = Columns::new(EventKind::Person, columns, &[], rows);
        let mut millis = Millis::new(self.config.rate);
        for n in events {
            let mut rng = Rng::for_event(self.config.seed, n);
            let name = &self.names[rng.below(self.names.len() as u64) as usize];
            let user = self.text(&mut rng, 7);
            let domain = self.text(&mut rng, 5);
            let cards: [usize; 4] = std::array::from_fn(|_| rng.below(10_000) as usize * 4);
            let city = CITIES[rng.below(CITIES.len() as u64) as usize];
            let state = STATES[rng.below(STATES.len() as u64) as usize];
            let current = 8 + name.len() + 17 + 19 + city.len() + state.len() + 8;
            let extra = extra_len(&mut rng, current, 200);
            let extra = self.text(&mut rng, extra);
            c.int(0, FIRST_ID + last_person(n));
            c.str(1, name);
            if let Some(b) = c.string_builder(2) {
                let _ = b.write_str(user);
                let _ = b.write_str("@");
                let _ = b.write_str(domain);
                b.append_value(".com");
            }
            if let Some(b) = c.string_builder(3) {
                for (i, &d) in cards.iter().enumerate() {
                    if i > 0 {
                        let _ = b.write_str(" ");
                    }
                    let _ = b.write_str(&self.digits[d..d + 4]);
                }
                b.append_value("");
            }
            c.str(4, city);
            c.str(5, state);
            c.int(6, millis.at(n));
            c.str(7, extra);
        }
        c.finish()
    }

    fn auctions(
        &self,
        events: impl Iterator<Item = u64> + Clone,
        columns: &[usize],
    ) -> Vec<ArrayRef> {
        let rows = events.clone().count();
        let mut c = Columns::new(EventKind::Auction, columns, &[], rows);
        let rate = self.config.rate;
        // Auctions run for twice the time, on average, in which the generator
        // opens `IN_FLIGHT_AUCTIONS` auctions.
        let events_per_lifetime = IN_FLIGHT_AUCTIONS as u64 * EPOCH / (AUCTION_END - PERSON_END);
        let horizon_ns = (events_per_lifetime as u128 * 1_000_000_000 / rate as u128) as u64;
        for n in events {
            let mut rng = Rng::for_event(self.config.seed, n);
            let item = self.text(&mut rng, 20);
            let description = self.text(&mut rng, 100);
            let initial = price(&mut rng);
            let reserve = initial + price(&mut rng);
            let ts_ns = self.timestamp_ns(n);
            let length_ns = 1 + rng.below((2 * horizon_ns).max(1)) as i64;
            let hot = rng.below(4) > 0;
            let last = last_person(n);
            let cold = recent_id(&mut rng, last, ACTIVE_PEOPLE, !hot);
            let seller = select_unpredictable(hot, (last / HOT_BLOCK) * HOT_BLOCK, cold);
            let category = FIRST_CATEGORY + rng.below(NUM_CATEGORIES) as i64;
            let extra = extra_len(&mut rng, 8 + 20 + 100 + 6 * 8, 500);
            let extra = self.text(&mut rng, extra);
            c.int(0, FIRST_ID + last_auction(n));
            c.str(1, item);
            c.str(2, description);
            c.int(3, initial);
            c.int(4, reserve);
            c.int(5, ts_ns / 1_000_000);
            c.int(6, (ts_ns + length_ns) / 1_000_000);
            c.int(7, FIRST_ID + seller);
            c.int(8, category);
            c.str(9, extra);
        }
        c.finish()
    }

    fn bids(&self, events: impl Iterator<Item = u64> + Clone, columns: &[usize]) -> Vec<ArrayRef> {
        let rows = events.clone().count();
        let mut c = Columns::new(EventKind::Bid, columns, &[3, 4, 6], rows);
        let wants_extra = columns.contains(&6);
        let mut extras = Vec::with_capacity(if wants_extra { rows } else { 0 });
        let mut millis = Millis::new(self.config.rate);
        let mut picks = Vec::with_capacity(rows);
        let mut price_draws = Vec::with_capacity(if c.wants(2) { rows } else { 0 });
        for n in events {
            let mut rng = Rng::for_event(self.config.seed, n);
            // Hot or not is a coin flip per bid: each choice is made with
            // a select, not a branch (the cold side's draw is made either
            // way and kept only when cold), so the draws are those a branch
            // would make.
            let hot = rng.below(2) > 0;
            let last = last_auction(n);
            let cold = recent_id(&mut rng, last, IN_FLIGHT_AUCTIONS, !hot);
            let auction = select_unpredictable(hot, (last / HOT_BLOCK) * HOT_BLOCK, cold);
            let hot = rng.below(4) > 0;
            let last = last_person(n);
            let cold = recent_id(&mut rng, last, ACTIVE_PEOPLE, !hot);
            let bidder = select_unpredictable(hot, (last / HOT_BLOCK) * HOT_BLOCK + 1, cold);
            // Drawn whether or not it is read, so later draws stay the same.
            let price_draw = rng.next_f64();
            let hot = rng.below(2) > 0;
            let bound = select_unpredictable(hot, HOT_CHANNELS.len(), CHANNELS);
            let channel = select_unpredictable(hot, CHANNELS, 0) + rng.below(bound as u64) as usize;
            let extra = extra_len(&mut rng, 32, 100);
            let extra = self.text_span(&mut rng, extra);
            c.int(0, FIRST_ID + auction);
            c.int(1, FIRST_ID + bidder);
            if c.wants(2) {
                price_draws.push(price_draw);
            }
            picks.push(channel as u32);
            c.int(5, millis.at(n));
            if wants_extra {
                extras.push(extra);
            }
        }
        // The prices after the draws, in a loop of their own: each is an
        // `exp2` call, whose result the loop above would wait for; here the
        // calls overlap one another.
        c.set_ints(2, || price_draws.iter().map(|&u| price_of(u)).collect());
        c.gather(3, &self.channel_names, &picks);
        c.gather(4, &self.channel_urls, &picks);
        if wants_extra {
            // SAFETY: the pool is ASCII, so every span of it is UTF-8 (and
            // each fits: a bid's `extra_len` is at most 82 bytes).
            c.take(6, unsafe {
                strings_of_spans::<BID_EXTRA_CHUNKS>(self.pool.as_bytes(), &extras)
            });
        }
        c.finish()
    }
}

/// Event times in milliseconds of ascending event numbers, each
/// [`Generator::timestamp_ns`] over a million, with a division only when
/// the millisecond changes (every `rate / 1000` events at high rates), not
/// two divisions by the rate for every event.
struct Millis {
    rate: u64,
    /// The milliseconds since the base time of the last event asked for.
    ms: u64,
    /// The first event of the next millisecond.
    next: u64,
}

impl Millis {
    fn new(rate: u64) -> Self {
        Millis {
            rate,
            ms: 0,
            next: 0,
        }
    }

    /// The event time of event `n`, which is not below any asked for before.
    #[inline]
    fn at(&mut self, n: u64) -> i64 {
        if n >= self.next {
            let rate = self.rate;
            // `n * 1000 / rate` without overflow, as `timestamp_ns` does.
            self.ms = (n / rate) * 1000 + (n % rate) * 1000 / rate;
            // The least event `m` with `m * 1000 >= (ms + 1) * rate`.
            let next = (u128::from(self.ms + 1) * u128::from(rate)).div_ceil(1000);
            self.next = u64::try_from(next).unwrap_or(u64::MAX);
        }
        BASE_TIME_NS / 1_000_000 + self.ms as i64
    }
}

/// The most chunks a [`StringTable`]'s strings take (128 bytes): each
/// count up to it is a copy of its own, with the chunks as fixed moves.
const TABLE_CHUNKS: usize = 4;

/// The chunks that cover a bid's `extra` (at most 82 bytes).
const BID_EXTRA_CHUNKS: usize = 3;

/// Strings that batches pick by index (the channels' names and URLs), with
/// their bytes kept again with room after the last, so that each pick is
/// copied as the same few 32-byte chunks, past its end, rather than by a
/// `memcpy` call of its own length: a 12-byte channel name cost 9 ns a bid
/// that way.
struct StringTable {
    /// The strings; their values buffer ends with `chunks * CHUNK` zero
    /// bytes after the last string.
    strings: StringArray,
    /// How many chunks cover the longest string.
    chunks: usize,
}

impl StringTable {
    fn new(strings: Vec<String>) -> Self {
        let chunks = strings
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(0)
            .div_ceil(CHUNK)
            .max(1);
        assert!(
            chunks <= TABLE_CHUNKS,
            "a string table holds strings of at most {} bytes",
            TABLE_CHUNKS * CHUNK
        );
        let plain = StringArray::from(strings);
        let mut padded = plain.value_data().to_vec();
        padded.resize(padded.len() + chunks * CHUNK, 0);
        let strings = StringArray::new(plain.offsets().clone(), padded.into(), None);
        StringTable { strings, chunks }
    }

    /// The strings at `picks`, as arrow's `take` would give them. The
    /// string of the pick a few rows ahead is prefetched: the 10,000
    /// channel URLs (660 KB) do not stay in L2, and copying them one miss
    /// after another was a tenth of q19's CPU with `take`'s copy.
    fn gather(&self, picks: &[u32]) -> StringArray {
        let from = self.strings.value_offsets();
        // Each pick's place in the table, read once (the table's offsets do
        // not stay in L1 either).
        let spans: Vec<(usize, usize)> = picks
            .iter()
            .map(|&p| (from[p as usize] as usize, from[p as usize + 1] as usize))
            .collect();
        let data = self.strings.value_data();
        // SAFETY: the spans are whole strings of the table, so UTF-8.
        unsafe {
            match self.chunks {
                1 => strings_of_spans::<1>(data, &spans),
                2 => strings_of_spans::<2>(data, &spans),
                3 => strings_of_spans::<3>(data, &spans),
                _ => strings_of_spans::<TABLE_CHUNKS>(data, &spans),
            }
        }
    }
}

/// The strings at `spans` (start and end in `padded`), each copied as
/// `CHUNKS` 32-byte chunks ([`copy_spans`]); `padded` has room for the
/// chunks after its last string, so none is copied alone.
///
/// # Safety
///
/// Every span must be valid UTF-8. (A span longer than the chunks panics.)
unsafe fn strings_of_spans<const CHUNKS: usize>(
    padded: &[u8],
    spans: &[(usize, usize)],
) -> StringArray {
    let mut offsets = Vec::with_capacity(spans.len() + 1);
    offsets.push(0i32);
    let mut total = 0usize;
    for &(start, end) in spans {
        total += end - start;
        offsets.push(total as i32);
    }
    let values = copy_spans::<CHUNKS>(padded, spans, total);
    // SAFETY: the offsets start at 0 and ascend by each span's length,
    // ending at the length of `values`, which holds the spans' valid UTF-8
    // (the caller's promise) back to back, so valid UTF-8 between any two.
    unsafe {
        StringArray::new_unchecked(
            OffsetBuffer::new_unchecked(offsets.into()),
            values.into(),
            None,
        )
    }
}

/// Event numbers of `kind` in `start..end`, in order.
pub fn event_numbers(kind: EventKind, start: u64, end: u64) -> impl Iterator<Item = u64> + Clone {
    let offsets = kind.offsets();
    let first_epoch = start / EPOCH;
    let last_epoch = end.div_ceil(EPOCH);
    (first_epoch..last_epoch)
        .flat_map(move |e| offsets.clone().map(move |o| e * EPOCH + o))
        .filter(move |n| (start..end).contains(n))
}

/// An upper bound on the length of a generated string column's values.
fn max_string_len(kind: EventKind, column: &str) -> usize {
    match (kind, column) {
        (EventKind::Person, "extra") => 160,
        (EventKind::Auction, "extra") => 390,
        (_, "description") => 100,
        _ => 24,
    }
}

/// Builders for the requested columns of one batch; columns nobody reads are
/// never built.
struct Columns {
    schema: SchemaRef,
    ints: Vec<Option<Vec<i64>>>,
    strings: Vec<Option<StringBuilder>>,
    /// String columns gathered whole from a table instead of built.
    taken: Vec<Option<ArrayRef>>,
    order: Vec<usize>,
}

impl Columns {
    /// Builders for the `wanted` columns of `rows` events of `kind`; the
    /// `gathered` string columns come whole from a table
    /// ([`Columns::gather`]) and get no builder.
    fn new(kind: EventKind, wanted: &[usize], gathered: &[usize], rows: usize) -> Self {
        let schema = kind.schema();
        let mut ints = Vec::with_capacity(schema.fields().len());
        let mut strings = Vec::with_capacity(schema.fields().len());
        for (c, field) in schema.fields().iter().enumerate() {
            let want = wanted.contains(&c);
            let is_string = field.data_type() == &DataType::Utf8;
            ints.push((want && !is_string).then(|| Vec::with_capacity(rows)));
            // Sized for the column's largest values so no batch reallocates.
            let bytes = rows * max_string_len(kind, field.name());
            let built = want && is_string && !gathered.contains(&c);
            strings.push(built.then(|| StringBuilder::with_capacity(rows, bytes)));
        }
        Columns {
            taken: vec![None; schema.fields().len()],
            schema,
            ints,
            strings,
            order: wanted.to_vec(),
        }
    }

    /// Whether integer column `col` was requested: a value nobody reads
    /// need not be computed.
    #[inline]
    fn wants(&self, col: usize) -> bool {
        self.ints[col].is_some()
    }

    #[inline]
    fn int(&mut self, col: usize, v: i64) {
        if let Some(vec) = &mut self.ints[col] {
            vec.push(v);
        }
    }

    /// Sets integer column `col`, if requested, to the values `make` returns.
    fn set_ints(&mut self, col: usize, make: impl FnOnce() -> Vec<i64>) {
        if let Some(vec) = &mut self.ints[col] {
            *vec = make();
        }
    }

    #[inline]
    fn str(&mut self, col: usize, v: &str) {
        if let Some(b) = &mut self.strings[col] {
            b.append_value(v);
        }
    }

    /// Sets column `col`, if requested, to `values`.
    fn take(&mut self, col: usize, values: StringArray) {
        if self.order.contains(&col) {
            self.taken[col] = Some(Arc::new(values));
        }
    }

    /// Sets string column `col`, if requested, to the `table` values that
    /// `picks` index.
    fn gather(&mut self, col: usize, table: &StringTable, picks: &[u32]) {
        if self.order.contains(&col) {
            self.taken[col] = Some(Arc::new(table.gather(picks)));
        }
    }

    #[inline]
    fn string_builder(&mut self, col: usize) -> Option<&mut StringBuilder> {
        self.strings[col].as_mut()
    }

    /// The requested columns, in the order they were requested.
    fn finish(mut self) -> Vec<ArrayRef> {
        self.order
            .iter()
            .map(|&c| -> ArrayRef {
                if let Some(b) = self.strings[c].as_mut() {
                    return Arc::new(b.finish());
                }
                if let Some(values) = self.taken[c].take() {
                    return values;
                }
                let ints = self.ints[c].take().unwrap_or_default();
                match self.schema.field(c).data_type() {
                    DataType::Timestamp(..) => Arc::new(TimestampMillisecondArray::from(ints)),
                    _ => Arc::new(Int64Array::from(ints)),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;

    fn generator() -> Generator {
        Generator::new(GeneratorConfig {
            rate: 10_000_000,
            seed: 42,
        })
    }

    fn ints(a: &ArrayRef) -> Vec<i64> {
        a.as_primitive::<Int64Type>().values().to_vec()
    }

    const EVENTS: u64 = 200_000;

    #[test]
    fn event_mix_is_2_6_92_percent() {
        let count = |k| event_numbers(k, 0, EVENTS).count() as u64;
        assert_eq!(count(EventKind::Person), EVENTS / 50);
        assert_eq!(count(EventKind::Auction), EVENTS / 50 * 3);
        assert_eq!(count(EventKind::Bid), EVENTS / 50 * 46);
        assert_eq!(EventKind::of_event(0), EventKind::Person);
        assert_eq!(EventKind::of_event(3), EventKind::Auction);
        assert_eq!(EventKind::of_event(49), EventKind::Bid);
    }

    #[test]
    fn ids_are_dense_from_1000_and_categories_in_range() {
        let g = generator();
        let persons = ints(&g.build(EventKind::Person, 0, EVENTS, &[0])[0]);
        let expected: Vec<i64> = (0..persons.len() as i64).map(|i| FIRST_ID + i).collect();
        assert_eq!(persons, expected);
        let cols = g.build(EventKind::Auction, 0, EVENTS, &[0, 8, 7]);
        let auctions = ints(&cols[0]);
        let expected: Vec<i64> = (0..auctions.len() as i64).map(|i| FIRST_ID + i).collect();
        assert_eq!(auctions, expected);
        assert!(ints(&cols[1]).iter().all(|c| (10..=14).contains(c)));
        let sellers = ints(&cols[2]);
        assert!(
            sellers
                .iter()
                .all(|s| *s >= FIRST_ID && *s <= FIRST_ID + (EVENTS / 50) as i64)
        );
    }

    #[test]
    fn bids_have_hot_keys_and_real_ids() {
        let g = generator();
        let cols = g.build(EventKind::Bid, 0, EVENTS, &[0, 1, 2]);
        let (auctions, bidders, prices) = (ints(&cols[0]), ints(&cols[1]), ints(&cols[2]));
        let bids: Vec<u64> = event_numbers(EventKind::Bid, 0, EVENTS).collect();
        let mut hot_auction = 0;
        let mut hot_bidder = 0;
        for (i, &n) in bids.iter().enumerate() {
            let last_a = FIRST_ID + last_auction(n);
            let last_p = FIRST_ID + last_person(n);
            assert!(
                auctions[i] >= FIRST_ID && auctions[i] <= last_a,
                "auction of bid {n}"
            );
            // The hot bidder may be the person registered in the next epoch.
            assert!(
                bidders[i] >= FIRST_ID && bidders[i] <= last_p + 1,
                "bidder of bid {n}"
            );
            if auctions[i] == FIRST_ID + (last_auction(n) / 100) * 100 {
                hot_auction += 1;
            }
            if bidders[i] == FIRST_ID + (last_person(n) / 100) * 100 + 1 {
                hot_bidder += 1;
            }
            assert!(
                (100..=100_000_000).contains(&prices[i]),
                "price {}",
                prices[i]
            );
        }
        let share = |k: usize| k as f64 / bids.len() as f64;
        assert!(
            (0.49..0.56).contains(&share(hot_auction)),
            "hot auction share {}",
            share(hot_auction)
        );
        assert!(
            (0.74..0.8).contains(&share(hot_bidder)),
            "hot bidder share {}",
            share(hot_bidder)
        );
        // Log-uniform prices: about a sixth of them per decade.
        let below_1000 = prices.iter().filter(|p| **p < 1000).count();
        assert!(
            (0.15..0.18).contains(&share(below_1000)),
            "{}",
            share(below_1000)
        );
    }

    #[test]
    fn hot_channels_carry_half_the_bids_and_urls_hold_channel_ids() {
        let g = generator();
        let cols = g.build(EventKind::Bid, 0, EVENTS, &[3, 4]);
        let (channels, urls) = (cols[0].as_string::<i32>(), cols[1].as_string::<i32>());
        let hot = channels
            .iter()
            .flatten()
            .filter(|c| HOT_CHANNELS.contains(c))
            .count();
        let share = hot as f64 / channels.len() as f64;
        assert!((0.48..0.52).contains(&share), "{share}");
        for (c, u) in channels.iter().flatten().zip(urls.iter().flatten()) {
            assert!(u.starts_with("https://www.nexmark.com/"), "{u}");
            assert_eq!(
                HOT_CHANNELS.contains(&c),
                !u.contains("&channel_id="),
                "{c} {u}"
            );
        }
    }

    /// The choices made by selects (hot or cold auction, bidder, seller and
    /// channel) are those of plain branches, each cold side drawing only
    /// when taken, and `extra` copied by chunks is the pool's text, so the
    /// generated events are what they were.
    #[test]
    fn coin_flips_choose_as_branches_would() {
        let g = generator();
        let recent = |rng: &mut Rng, last: i64, window: i64| {
            let min = (last - window + 1).max(0);
            min + rng.below((last - min + 1).max(1) as u64) as i64
        };
        let bids = g.build(EventKind::Bid, 0, EVENTS, &[0, 1, 2, 3, 6]);
        let (auctions, bidders, prices) = (ints(&bids[0]), ints(&bids[1]), ints(&bids[2]));
        let (channels, extras) = (bids[3].as_string::<i32>(), bids[4].as_string::<i32>());
        for (i, n) in event_numbers(EventKind::Bid, 0, EVENTS).enumerate() {
            let mut rng = Rng::for_event(42, n);
            let auction = if rng.below(2) > 0 {
                (last_auction(n) / HOT_BLOCK) * HOT_BLOCK
            } else {
                recent(&mut rng, last_auction(n), IN_FLIGHT_AUCTIONS)
            };
            let bidder = if rng.below(4) > 0 {
                (last_person(n) / HOT_BLOCK) * HOT_BLOCK + 1
            } else {
                recent(&mut rng, last_person(n), ACTIVE_PEOPLE)
            };
            let price = price(&mut rng);
            let channel = if rng.below(2) > 0 {
                CHANNELS + rng.below(HOT_CHANNELS.len() as u64) as usize
            } else {
                rng.below(CHANNELS as u64) as usize
            };
            assert_eq!(auctions[i], FIRST_ID + auction, "auction of {n}");
            assert_eq!(bidders[i], FIRST_ID + bidder, "bidder of {n}");
            assert_eq!(prices[i], price, "price of {n}");
            assert_eq!(
                channels.value(i),
                g.channel_names.strings.value(channel),
                "{n}"
            );
            let len = extra_len(&mut rng, 32, 100);
            assert_eq!(extras.value(i), g.text(&mut rng, len), "extra of {n}");
        }
        let sellers = ints(&g.build(EventKind::Auction, 0, EVENTS, &[7])[0]);
        for (i, n) in event_numbers(EventKind::Auction, 0, EVENTS).enumerate() {
            let mut rng = Rng::for_event(42, n);
            let _ = (g.text(&mut rng, 20), g.text(&mut rng, 100));
            let _ = (price(&mut rng), price(&mut rng));
            let ts_ns = g.timestamp_ns(n);
            let events_per_lifetime =
                IN_FLIGHT_AUCTIONS as u64 * EPOCH / (AUCTION_END - PERSON_END);
            let horizon_ns = (events_per_lifetime as u128 * 1_000_000_000 / 10_000_000) as u64;
            let _ = (ts_ns, rng.below((2 * horizon_ns).max(1)));
            let seller = if rng.below(4) > 0 {
                (last_person(n) / HOT_BLOCK) * HOT_BLOCK
            } else {
                recent(&mut rng, last_person(n), ACTIVE_PEOPLE)
            };
            assert_eq!(sellers[i], FIRST_ID + seller, "seller of {n}");
        }
    }

    #[test]
    fn picked_strings_are_those_take_gives() {
        // Tables of one to four chunks (longest strings 31, 50, 80 and 128
        // bytes), of every length up to those, picked in any order.
        for (longest, chunks) in [(31, 1), (50, 2), (80, 3), (128, 4)] {
            let strings: Vec<String> = (0..=longest)
                .map(|len| (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect())
                .collect();
            let table = StringTable::new(strings);
            assert_eq!(table.chunks, chunks);
            let mut rng = Rng::for_event(9, 0);
            let picks: Vec<u32> = (0..5000)
                .map(|_| rng.below(longest as u64 + 1) as u32)
                .collect();
            let want = arrow::compute::take(
                &table.strings,
                &arrow::array::UInt32Array::from(picks.clone()),
                None,
            )
            .unwrap();
            assert_eq!(&table.gather(&picks) as &dyn Array, want.as_ref());
            assert_eq!(table.gather(&[]).len(), 0);
        }
    }

    /// The integer roundings give what the float ones they replace gave.
    #[test]
    fn roundings_equal_the_float_ones() {
        for desired in 0..100_000u64 {
            assert_eq!(
                fifth_rounded(desired),
                (desired as f64 * 0.2).round() as u64,
                "{desired}"
            );
        }
        let mut rng = Rng::for_event(7, 0);
        let halves = (100..2_000_000).map(|n| n as f64 + 0.5);
        let below = (100..2_000_000).map(|n| f64::from_bits((n as f64 + 0.5).to_bits() - 1));
        let random = (0..1_000_000).map(|_| (rng.next_f64() * 6.0 * 3.33).exp2() * 100.0);
        for x in halves
            .chain(below)
            .chain(random)
            .chain([1e8, 1e8 - 0.5, 2f64.powi(51)])
        {
            assert_eq!(round_positive(x), x.round() as i64, "{x}");
        }
    }

    #[test]
    fn extra_pads_events_to_their_average_size() {
        let g = generator();
        let avg = |kind, col| {
            let a = &g.build(kind, 0, EVENTS, &[col])[0];
            let s = a.as_string::<i32>();
            s.value_data().len() as f64 / s.len() as f64
        };
        assert!((60.0..76.0).contains(&avg(EventKind::Bid, 6)));
        assert!((300.0..350.0).contains(&avg(EventKind::Auction, 9)));
        assert!((110.0..150.0).contains(&avg(EventKind::Person, 7)));
    }

    #[test]
    fn a_split_yields_the_same_values_as_the_whole_range() {
        let g = generator();
        let all: Vec<ArrayRef> = g.build(EventKind::Bid, 0, 10_000, &[0, 1, 2, 3, 4, 5, 6]);
        let first = g.build(EventKind::Bid, 0, 4_321, &[0, 1, 2, 3, 4, 5, 6]);
        let second = g.build(EventKind::Bid, 4_321, 10_000, &[0, 1, 2, 3, 4, 5, 6]);
        for c in 0..7 {
            let joined = arrow::compute::concat(&[first[c].as_ref(), second[c].as_ref()]).unwrap();
            assert_eq!(&joined, &all[c], "column {c}");
        }
        let projected = g.build(EventKind::Bid, 0, 10_000, &[6, 2]);
        assert_eq!(
            &projected[0], &all[6],
            "a projection yields the same values"
        );
        assert_eq!(&projected[1], &all[2]);
        // Without the price, which is then not computed, the draws after it
        // (the channel) are the same.
        let without_price = g.build(EventKind::Bid, 0, 10_000, &[3, 1]);
        assert_eq!(&without_price[0], &all[3], "channels without the price");
        assert_eq!(&without_price[1], &all[1]);
    }

    #[test]
    fn milliseconds_counted_along_equal_the_divided_times() {
        for rate in [1, 3, 7, 999, 1000, 1001, 12_345, 10_000_000, 123_456_789] {
            let g = Generator::new(GeneratorConfig { rate, seed: 1 });
            let mut millis = Millis::new(rate);
            // Every event, then gaps as between bids of two epochs.
            let events = (0..3000)
                .chain((3000..400_000).step_by(7))
                .chain([1_000_000_000]);
            for n in events {
                assert_eq!(
                    millis.at(n),
                    g.timestamp_ns(n) / 1_000_000,
                    "event {n} at {rate}/s"
                );
            }
        }
    }

    #[test]
    fn event_time_advances_by_one_over_rate() {
        let g = Generator::new(GeneratorConfig {
            rate: 1000,
            seed: 1,
        });
        assert_eq!(g.timestamp_ns(0), BASE_TIME_NS);
        assert_eq!(g.timestamp_ns(1), BASE_TIME_NS + 1_000_000);
        assert_eq!(g.timestamp_ns(2500), BASE_TIME_NS + 2_500_000_000);
    }
}
