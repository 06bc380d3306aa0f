//! Connector tables as DataFusion sees them: schemas to plan against. Rows
//! never flow through DataFusion's scan; the streaming planner replaces each
//! scan with the table's connector.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Result, not_impl_err};
use datafusion::datasource::TableType;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

/// A table declared with `CREATE TABLE … WITH (connector = …)`.
#[derive(Debug)]
pub(crate) struct ConnectorTable {
    pub schema: SchemaRef,
}

#[async_trait]
impl TableProvider for ConnectorTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        not_impl_err!("connector tables are read by flumen's streaming runtime, not by DataFusion")
    }
}
