//! `[auth.NAME]`, `[passport]`, `[rate_limit.NAME]`, `[cors.NAME]`, `[redis]`, `[cache]` and a
//! route's protection and cache keys → their validated models.

use crate::model::*;
use crate::raw::*;
use crate::route::Names;
use crate::validate::Ctx;

/// A route's protection keys and cache settings.
pub(crate) fn route_protection(
    _cx: &mut Ctx<'_, '_>,
    _raw: &RawRoute,
    _what: &str,
    _names: &Names<'_>,
) -> (crate::RouteProtection, Option<crate::RouteCache>) {
    (crate::RouteProtection::default(), None)
}
