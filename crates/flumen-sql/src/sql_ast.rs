//! Reading sqlparser's syntax tree, for the rewrites flumen makes of a
//! parsed statement before DataFusion plans it (`tvf`, `group_windows`,
//! `if_function`, `repeated_names`).

use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident,
};

/// A column's or table's name as SQL resolves it: a quoted one as written,
/// others in lower case.
pub(crate) fn resolved_name(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

/// The argument expressions, when every argument is a plain positional one.
pub(crate) fn positional(args: &[FunctionArg]) -> Option<Vec<&Expr>> {
    args.iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
            _ => None,
        })
        .collect()
}

/// The function `e` calls, in lower case, with its arguments, when they
/// are all positional.
pub(crate) fn call(e: &Expr) -> Option<(String, Vec<&Expr>)> {
    let Expr::Function(f) = e else {
        return None;
    };
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    Some((f.name.to_string().to_lowercase(), positional(&list.args)?))
}
