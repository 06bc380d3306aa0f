//! The `blackhole` sink: discards every row (the job counts them), for
//! benchmarks that measure the engine rather than a sink.

use arrow::array::RecordBatch;
use async_trait::async_trait;
use flumen_runtime::{Sink, SinkFactory, TaskContext};
use flumen_types::Result;

/// The `blackhole` connector: writes only, and keeps nothing.
pub(crate) struct Blackhole;

impl crate::Connector for Blackhole {
    fn name(&self) -> &'static str {
        "blackhole"
    }
    fn options(&self) -> &'static [crate::OptionSpec] {
        &[]
    }
    fn delivery(&self) -> Option<crate::Delivery> {
        Some(crate::Delivery::AtLeastOnce)
    }
    fn accepts_updates(&self, _spec: &crate::TableSpec) -> bool {
        true
    }
    fn sink(
        &self,
        _spec: &crate::TableSpec,
        _input: arrow::datatypes::SchemaRef,
        _unique: &str,
    ) -> Result<std::sync::Arc<dyn SinkFactory>> {
        Ok(std::sync::Arc::new(BlackholeSinkFactory))
    }
}

/// Makes sinks that drop their input.
pub struct BlackholeSinkFactory;

impl SinkFactory for BlackholeSinkFactory {
    fn describe(&self) -> String {
        "Sink: blackhole".to_string()
    }

    fn create(&self, _ctx: &TaskContext) -> Result<Box<dyn Sink>> {
        Ok(Box::new(BlackholeSink))
    }
}

struct BlackholeSink;

#[async_trait]
impl Sink for BlackholeSink {
    async fn write(&mut self, _batch: RecordBatch) -> Result<()> {
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}
