//! A lookup join: each row of a stream is joined with the rows of an
//! external table (PostgreSQL, Redis) that have its key, read when the row
//! arrives (processing time, as Flink's lookup join). Keys read recently are
//! served from a bounded cache whose entries expire a fixed time after they
//! were read. The output is append-only: a later change of the table does
//! not revise rows already joined.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array, new_null_array};
use arrow::compute::{filter_record_batch, interleave, sort_to_indices, take, take_record_batch};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use datafusion::common::HashMap;
use datafusion::common::hash_map::Entry;
use datafusion::physical_expr::PhysicalExpr;
use flumen_runtime::{
    Lookup, LookupCache, LookupFactory, Operator, OperatorFactory, TaskContext, wait_for,
};
use flumen_types::{FlumenError, Result};

use crate::JoinKind;

/// Makes the lookup join of each subtask.
pub struct LookupJoinFactory {
    /// Inner or left outer (a stream row without a table row is kept,
    /// padded with nulls).
    pub kind: JoinKind,
    /// The key of each stream row, one expression per table key column,
    /// over the stream's columns.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// The stream's own columns (an updating stream's op column follows).
    pub width: usize,
    /// The stream's op column when it is updating: each output row carries
    /// the op of its stream row.
    pub op_column: Option<usize>,
    /// Where table rows come from.
    pub lookup: Arc<dyn LookupFactory>,
    /// A condition on a joined row (stream columns, then table columns)
    /// beyond equal keys.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// The cache, or `None` to read every key of every batch.
    pub cache: Option<LookupCache>,
    /// Stream columns, table columns, then the op column if updating.
    pub output: SchemaRef,
}

impl OperatorFactory for LookupJoinFactory {
    fn describe(&self) -> String {
        let kind = if self.kind == JoinKind::Left {
            "left"
        } else {
            "inner"
        };
        let keys: Vec<String> = self.keys.iter().map(|k| k.to_string()).collect();
        let mut text = format!(
            "LookupJoin ({kind}): {} by [{}]",
            self.lookup.describe(),
            keys.join(", ")
        );
        if let Some(f) = &self.filter {
            text.push_str(&format!(", filter {f}"));
        }
        match &self.cache {
            Some(c) => text.push_str(&format!(
                ", cache {} keys for {} ms{}",
                c.max_keys,
                c.ttl.as_millis(),
                if c.cache_missing {
                    ""
                } else {
                    ", missing keys not cached"
                }
            )),
            None => text.push_str(", no cache"),
        }
        text
    }

    fn create(&self, _ctx: &TaskContext) -> Result<Box<dyn Operator>> {
        Ok(Box::new(LookupJoin {
            kind: self.kind,
            keys: self.keys.clone(),
            width: self.width,
            op_column: self.op_column,
            lookup: self.lookup.create()?,
            table: self.lookup.schema(),
            filter: self.filter.clone(),
            cache: self.cache,
            output: self.output.clone(),
            converter: None,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }))
    }
}

/// The rows of one key: `len` rows from `offset` of a block that a lookup
/// returned, sorted by key.
#[derive(Clone)]
struct Found {
    block: Arc<RecordBatch>,
    offset: usize,
    len: usize,
}

/// A cached key: its rows and when they were read.
struct Cached {
    found: Found,
    read_at: Instant,
}

struct LookupJoin {
    kind: JoinKind,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    width: usize,
    op_column: Option<usize>,
    lookup: Box<dyn Lookup>,
    table: SchemaRef,
    filter: Option<Arc<dyn PhysicalExpr>>,
    cache: Option<LookupCache>,
    output: SchemaRef,
    converter: Option<RowConverter>,
    /// Cached keys (`arrow-row` bytes of the key columns).
    entries: HashMap<Box<[u8]>, Cached>,
    /// Cached keys in the order they were read, to evict the oldest; a key
    /// read again is listed again, and a stale listing is skipped.
    order: VecDeque<(Box<[u8]>, Instant)>,
}

fn err(e: impl std::fmt::Display) -> FlumenError {
    FlumenError::execution(format!("lookup join: {e}"))
}

impl LookupJoin {
    /// Remembers `found` for `key`, evicting the oldest keys beyond the
    /// cache's size.
    fn remember(&mut self, key: &[u8], found: &Found, now: Instant) {
        let Some(cache) = self.cache else {
            return;
        };
        if found.len == 0 && !cache.cache_missing {
            return;
        }
        self.entries.insert(
            key.into(),
            Cached {
                found: found.clone(),
                read_at: now,
            },
        );
        self.order.push_back((key.into(), now));
        while self.entries.len() > cache.max_keys {
            let Some((oldest, read_at)) = self.order.pop_front() else {
                break;
            };
            if let Entry::Occupied(e) = self.entries.entry(oldest)
                && e.get().read_at == read_at
            {
                e.remove();
            }
        }
        // Listings of keys read again pile up at most as often as keys are
        // read: drop the stale ones once they are most of the queue.
        if self.order.len() > 2 * self.entries.len() + 1024 {
            let entries = &self.entries;
            self.order
                .retain(|(k, at)| entries.get(k).is_some_and(|c| c.read_at == *at));
        }
    }

    /// The cached rows of `key`, if read less than the TTL ago.
    fn cached(&self, key: &[u8], now: Instant) -> Option<Found> {
        let cache = self.cache?;
        let c = self.entries.get(key)?;
        (now.duration_since(c.read_at) < cache.ttl).then(|| c.found.clone())
    }

    /// Reads the keys of `rows` (distinct key rows of `keys`) from the
    /// table: each key's rows, in order of `rows`.
    fn read(&mut self, keys: &[ArrayRef], rows: &[u32]) -> Result<Vec<Found>> {
        let indices = UInt32Array::from(rows.to_vec());
        let wanted: Vec<ArrayRef> = keys
            .iter()
            .map(|k| take(k, &indices, None))
            .collect::<std::result::Result<_, _>>()?;
        let (batch, owners) = wait_for(self.lookup.lookup(&wanted))??;
        if batch.num_rows() != owners.len() || owners.iter().any(|&o| o as usize >= rows.len()) {
            return Err(FlumenError::internal(format!(
                "a lookup returned {} rows with {} key indices for {} keys",
                batch.num_rows(),
                owners.len(),
                rows.len()
            )));
        }
        let owners = UInt32Array::from(owners);
        let order = sort_to_indices(&owners, None, None)?;
        let block = Arc::new(take_record_batch(&batch, &order)?);
        let sorted = take(&owners, &order, None)?;
        let sorted = sorted
            .as_any()
            .downcast_ref::<UInt32Array>()
            .expect("take of a UInt32Array is one");
        let mut found = vec![
            Found {
                block: block.clone(),
                offset: 0,
                len: 0,
            };
            rows.len()
        ];
        for (at, &owner) in sorted.values().iter().enumerate() {
            let f = &mut found[owner as usize];
            if f.len == 0 {
                f.offset = at;
            }
            f.len += 1;
        }
        Ok(found)
    }

    /// The joined rows: stream rows `left` with table rows `right` (block,
    /// row), `None` for a row padded with nulls.
    fn joined(
        &self,
        batch: &RecordBatch,
        left: &[u32],
        right: &[Option<(usize, usize)>],
        blocks: &[Arc<RecordBatch>],
    ) -> Result<RecordBatch> {
        let indices = UInt32Array::from(left.to_vec());
        let mut columns: Vec<ArrayRef> = batch.columns()[..self.width]
            .iter()
            .map(|c| take(c, &indices, None))
            .collect::<std::result::Result<_, _>>()?;
        // The last "block" is one row of nulls, for padded rows.
        let picks: Vec<(usize, usize)> = right
            .iter()
            .map(|r| r.unwrap_or((blocks.len(), 0)))
            .collect();
        for (c, field) in self.table.fields().iter().enumerate() {
            let nulls = new_null_array(field.data_type(), 1);
            let arrays: Vec<&dyn Array> = blocks
                .iter()
                .map(|b| b.column(c).as_ref())
                .chain([nulls.as_ref()])
                .collect();
            columns.push(interleave(&arrays, &picks)?);
        }
        if let Some(op) = self.op_column {
            columns.push(take(batch.column(op), &indices, None)?);
        }
        Ok(RecordBatch::try_new(self.output.clone(), columns)?)
    }
}

impl Operator for LookupJoin {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<RecordBatch>) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let keys: Vec<ArrayRef> = self
            .keys
            .iter()
            .map(|k| k.evaluate(&batch).and_then(|v| v.into_array(n)))
            .collect::<std::result::Result<_, _>>()
            .map_err(err)?;
        let converter = match &mut self.converter {
            Some(c) => c,
            None => self.converter.insert(RowConverter::new(
                keys.iter()
                    .map(|k| SortField::new(k.data_type().clone()))
                    .collect(),
            )?),
        };
        let rows = converter.convert_columns(&keys)?;
        let now = Instant::now();
        // Each row's distinct key (`NO_KEY` for a null key) and the first
        // row of each distinct key: the cache is probed once per key.
        const NO_KEY: u32 = u32::MAX;
        let mut key_of_row = Vec::with_capacity(n);
        let mut first_rows: Vec<u32> = Vec::new();
        let mut distinct: HashMap<&[u8], u32> = HashMap::new();
        for (i, row) in rows.iter().enumerate() {
            if keys.iter().any(|k| k.is_null(i)) {
                key_of_row.push(NO_KEY);
                continue;
            }
            let next = first_rows.len() as u32;
            let k = *distinct.entry(row.data()).or_insert(next);
            if k == next {
                first_rows.push(i as u32);
            }
            key_of_row.push(k);
        }
        let mut found: Vec<Option<Found>> = first_rows
            .iter()
            .map(|&i| self.cached(rows.row(i as usize).data(), now))
            .collect();
        let missing: Vec<usize> = (0..found.len()).filter(|&k| found[k].is_none()).collect();
        if !missing.is_empty() {
            let to_read: Vec<u32> = missing.iter().map(|&k| first_rows[k]).collect();
            let read = self.read(&keys, &to_read)?;
            for (k, f) in missing.into_iter().zip(read) {
                self.remember(rows.row(first_rows[k] as usize).data(), &f, now);
                found[k] = Some(f);
            }
        }
        // Each distinct key's rows as (block, first row, rows), the blocks
        // numbered in the order they are first met.
        let mut blocks: Vec<Arc<RecordBatch>> = Vec::new();
        let mut block_ids: HashMap<*const RecordBatch, usize> = HashMap::new();
        let spans: Vec<(usize, usize, usize)> = found
            .iter()
            .map(|f| {
                let f = f
                    .as_ref()
                    .expect("every key was found in the cache or read");
                let id = *block_ids.entry(Arc::as_ptr(&f.block)).or_insert_with(|| {
                    blocks.push(f.block.clone());
                    blocks.len() - 1
                });
                (id, f.offset, f.len)
            })
            .collect();
        // Pairs of stream row and table row.
        let (mut left, mut right) = (Vec::new(), Vec::new());
        for (i, &k) in key_of_row.iter().enumerate() {
            if k == NO_KEY {
                continue;
            }
            let (id, offset, len) = spans[k as usize];
            for row in offset..offset + len {
                left.push(i as u32);
                right.push(Some((id, row)));
            }
        }
        let mut matched = self.joined(&batch, &left, &right, &blocks)?;
        if let Some(filter) = &self.filter {
            let keep = filter
                .evaluate(&matched)
                .and_then(|v| v.into_array(matched.num_rows()))
                .map_err(err)?;
            let keep = keep
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(|| err("the join condition is not a boolean"))?;
            let keep = match keep.nulls() {
                Some(_) => arrow::compute::prep_null_mask_filter(keep),
                None => keep.clone(),
            };
            left = left
                .iter()
                .zip(keep.values().iter())
                .filter_map(|(&l, k)| k.then_some(l))
                .collect();
            matched = filter_record_batch(&matched, &keep)?;
        }
        if matched.num_rows() > 0 {
            out.push(matched);
        }
        if self.kind == JoinKind::Left {
            let mut has_match = vec![false; n];
            for &l in &left {
                has_match[l as usize] = true;
            }
            let lonely: Vec<u32> = (0..n as u32).filter(|&i| !has_match[i as usize]).collect();
            if !lonely.is_empty() {
                let pads = vec![None; lonely.len()];
                out.push(self.joined(&batch, &lonely, &pads, &[])?);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use arrow::array::{Int8Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::util::display::array_value_to_string;
    use datafusion::logical_expr::Operator as BinaryOp;
    use datafusion::physical_expr::expressions::{BinaryExpr, col, lit};
    use flumen_runtime::JobMetrics;

    use std::time::Duration;

    use super::*;

    /// A table of (id, name) rows in memory, counting the keys it is asked.
    struct Table {
        rows: Arc<Mutex<Vec<(i64, String)>>>,
        asked: Arc<Mutex<Vec<i64>>>,
    }

    fn table_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    #[async_trait::async_trait]
    impl Lookup for Table {
        async fn lookup(&mut self, keys: &[ArrayRef]) -> Result<(RecordBatch, Vec<u32>)> {
            let keys = keys[0].as_any().downcast_ref::<Int64Array>().unwrap();
            self.asked.lock().unwrap().extend(keys.values());
            let (mut ids, mut names, mut owners) = (Vec::new(), Vec::new(), Vec::new());
            // Rows come back in the table's order, not the keys'.
            for (id, name) in self.rows.lock().unwrap().iter() {
                if let Some(k) = keys.values().iter().position(|k| k == id) {
                    ids.push(*id);
                    names.push(name.clone());
                    owners.push(k as u32);
                }
            }
            let batch = RecordBatch::try_new(
                table_schema(),
                vec![
                    Arc::new(Int64Array::from(ids)),
                    Arc::new(StringArray::from(names)),
                ],
            )?;
            Ok((batch, owners))
        }
    }

    struct Tables {
        rows: Arc<Mutex<Vec<(i64, String)>>>,
        asked: Arc<Mutex<Vec<i64>>>,
    }

    impl LookupFactory for Tables {
        fn describe(&self) -> String {
            "memory".into()
        }
        fn schema(&self) -> SchemaRef {
            table_schema()
        }
        fn create(&self) -> Result<Box<dyn Lookup>> {
            Ok(Box::new(Table {
                rows: self.rows.clone(),
                asked: self.asked.clone(),
            }))
        }
    }

    fn stream_schema(updating: bool) -> SchemaRef {
        let mut fields = vec![
            Field::new("bidder", DataType::Int64, true),
            Field::new("price", DataType::Int64, false),
        ];
        if updating {
            fields.push(Field::new("_op", DataType::Int8, false));
        }
        Arc::new(Schema::new(fields))
    }

    fn output(updating: bool) -> SchemaRef {
        let mut fields: Vec<Field> = stream_schema(false)
            .fields()
            .iter()
            .chain(table_schema().fields())
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        if updating {
            fields.push(Field::new("_op", DataType::Int8, false));
        }
        Arc::new(Schema::new(fields))
    }

    struct Setup {
        op: Box<dyn Operator>,
        rows: Arc<Mutex<Vec<(i64, String)>>>,
        asked: Arc<Mutex<Vec<i64>>>,
    }

    fn setup(kind: JoinKind, cache: Option<LookupCache>, filter: bool, updating: bool) -> Setup {
        let rows = Arc::new(Mutex::new(vec![
            (1, "one".to_string()),
            (2, "two".to_string()),
            (2, "deux".to_string()),
            (3, "three".to_string()),
        ]));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let schema = stream_schema(updating);
        let joined = output(false);
        // Only table rows whose name is longer than 3 characters pass.
        let filter = filter.then(|| {
            let len = datafusion::functions::unicode::character_length();
            let call = datafusion::physical_expr::ScalarFunctionExpr::try_new(
                len,
                vec![col("name", &joined).unwrap()],
                &joined,
                Arc::new(datafusion::common::config::ConfigOptions::default()),
            )
            .unwrap();
            Arc::new(BinaryExpr::new(Arc::new(call), BinaryOp::Gt, lit(3i32)))
                as Arc<dyn PhysicalExpr>
        });
        let factory = LookupJoinFactory {
            kind,
            keys: vec![col("bidder", &schema).unwrap()],
            width: 2,
            op_column: updating.then_some(2),
            lookup: Arc::new(Tables {
                rows: rows.clone(),
                asked: asked.clone(),
            }),
            filter,
            cache,
            output: output(updating),
        };
        let ctx = TaskContext::new(0, 1, 128, Arc::new(JobMetrics::default()));
        Setup {
            op: factory.create(&ctx).unwrap(),
            rows,
            asked,
        }
    }

    fn bids(bidders: &[Option<i64>], updating: bool) -> RecordBatch {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(bidders.to_vec())),
            Arc::new(Int64Array::from_iter_values(
                (0..bidders.len() as i64).map(|i| 100 + i),
            )),
        ];
        if updating {
            columns.push(Arc::new(Int8Array::from_iter_values(
                (0..bidders.len()).map(|i| if i % 2 == 0 { 0 } else { 1 }),
            )));
        }
        RecordBatch::try_new(stream_schema(updating), columns).unwrap()
    }

    fn run(setup: &mut Setup, bidders: &[Option<i64>], updating: bool) -> Vec<String> {
        let mut out = Vec::new();
        setup
            .op
            .process_batch(bids(bidders, updating), &mut out)
            .unwrap();
        let mut rows: Vec<String> = out
            .iter()
            .flat_map(|b| {
                (0..b.num_rows()).map(move |r| {
                    b.columns()
                        .iter()
                        .map(|c| array_value_to_string(c, r).unwrap())
                        .collect::<Vec<_>>()
                        .join("|")
                })
            })
            .collect();
        rows.sort();
        rows
    }

    const CACHE: LookupCache = LookupCache {
        max_keys: 100,
        ttl: Duration::from_secs(3600),
        cache_missing: true,
    };

    #[tokio::test(flavor = "multi_thread")]
    async fn inner_join_pairs_each_row_with_every_row_of_its_key() {
        let mut s = setup(JoinKind::Inner, None, false, false);
        let rows = run(&mut s, &[Some(2), Some(9), None, Some(1), Some(2)], false);
        assert_eq!(
            rows,
            [
                "1|103|1|one",
                "2|100|2|deux",
                "2|100|2|two",
                "2|104|2|deux",
                "2|104|2|two"
            ]
        );
        // Each distinct key once per batch; a null key never.
        let mut asked = s.asked.lock().unwrap().clone();
        asked.sort();
        assert_eq!(asked, [1, 2, 9]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn left_join_pads_rows_without_a_table_row() {
        let mut s = setup(JoinKind::Left, None, false, false);
        let rows = run(&mut s, &[Some(9), Some(3), None], false);
        assert_eq!(rows, ["3|101|3|three", "9|100||", "|102||"]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_condition_on_table_columns_decides_what_matches() {
        let mut s = setup(JoinKind::Left, None, true, false);
        // Key 1's only row ("one") fails: padded; key 2 keeps "deux" only.
        let rows = run(&mut s, &[Some(1), Some(2)], false);
        assert_eq!(rows, ["1|100||", "2|101|2|deux"]);
        let mut s = setup(JoinKind::Inner, None, true, false);
        assert_eq!(run(&mut s, &[Some(1), Some(3)], false), ["3|101|3|three"]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_cache_serves_keys_until_they_expire() {
        let ttl = Duration::from_millis(300);
        let mut s = setup(
            JoinKind::Left,
            Some(LookupCache { ttl, ..CACHE }),
            false,
            false,
        );
        assert_eq!(
            run(&mut s, &[Some(1), Some(7)], false),
            ["1|100|1|one", "7|101||"]
        );
        // The table changes; the cache still answers, missing key included.
        *s.rows.lock().unwrap() = vec![(1, "uno".into()), (7, "sept".into())];
        assert_eq!(
            run(&mut s, &[Some(1), Some(7)], false),
            ["1|100|1|one", "7|101||"]
        );
        assert_eq!(s.asked.lock().unwrap().len(), 2);
        std::thread::sleep(ttl);
        assert_eq!(
            run(&mut s, &[Some(1), Some(7)], false),
            ["1|100|1|uno", "7|101|7|sept"]
        );
        assert_eq!(s.asked.lock().unwrap().len(), 4);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_full_cache_drops_the_key_read_longest_ago() {
        let cache = LookupCache {
            max_keys: 2,
            ..CACHE
        };
        let mut s = setup(JoinKind::Inner, Some(cache), false, false);
        run(&mut s, &[Some(1)], false);
        run(&mut s, &[Some(2), Some(3)], false);
        s.asked.lock().unwrap().clear();
        // 1 was evicted by 2 and 3; reading it again evicts 2.
        run(&mut s, &[Some(3), Some(1)], false);
        assert_eq!(*s.asked.lock().unwrap(), [1]);
        run(&mut s, &[Some(2)], false);
        assert_eq!(*s.asked.lock().unwrap(), [1, 2]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn missing_keys_are_read_again_unless_cached() {
        let cache = LookupCache {
            cache_missing: false,
            ..CACHE
        };
        let mut s = setup(JoinKind::Inner, Some(cache), false, false);
        run(&mut s, &[Some(8), Some(1)], false);
        run(&mut s, &[Some(8), Some(1)], false);
        let mut asked = s.asked.lock().unwrap().clone();
        asked.sort();
        assert_eq!(asked, [1, 8, 8]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_updating_stream_keeps_each_rows_op() {
        let mut s = setup(JoinKind::Left, Some(CACHE), false, true);
        let rows = run(&mut s, &[Some(1), Some(1), Some(5)], true);
        assert_eq!(rows, ["1|100|1|one|0", "1|101|1|one|1", "5|102|||0"]);
    }

    #[test]
    fn a_lookup_outside_the_runtime_is_an_error_not_a_panic() {
        let mut s = setup(JoinKind::Inner, None, false, false);
        let e =
            s.op.process_batch(bids(&[Some(1)], false), &mut Vec::new())
                .unwrap_err();
        assert!(e.to_string().contains("outside the runtime"), "{e}");
    }
}
