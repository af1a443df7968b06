//! GET_NUMBER: picks a card that can take the service now and leases it with
//! compare-and-swap, so no other call, on this marketplace or another, gets the same number
//! while the activation is open.

use simrelay_sdk::KeyValue;
use simrelay_sdk::phone::starts_with_any;

use crate::activation::{self, Activation};
use crate::inventory::{self, ANY_OPERATOR, OnSale};
use crate::protocol::NumberRequest;
use crate::settings::Settings;
use crate::usage::{Lease, Usage};

/// Swaps tried on one card before moving on: each lost swap means someone else just wrote
/// the card, most likely leasing it.
const SWAPS_PER_CARD: usize = 4;

/// The activation opened, with the card it leased; `None`: no number fits now.
pub fn get_number(
    instance: &str,
    now_ms: u64,
    settings: &Settings,
    own: &dyn KeyValue,
    shared: &dyn KeyValue,
    request: &NumberRequest,
) -> Result<Option<(Activation, OnSale)>, String> {
    let Some(service_floor) = settings.service(&request.service) else {
        return Ok(None);
    };
    if !pays(request.sum, service_floor) {
        return Ok(None);
    }
    let mut candidates: Vec<OnSale> = inventory::on_sale(shared, settings)?
        .into_iter()
        .filter(|sale| fits(sale, request, settings))
        .collect();
    if candidates.is_empty() {
        return Ok(None);
    }
    // The least offered number for the service first, then the longest unused card: the
    // farm wears evenly and numbers reach the offer cap last.
    candidates.sort_by_cached_key(|sale| {
        (
            sale.usage.history(&sale.number, &request.service).offers,
            sale.usage.last_leased_ms.unwrap_or(0),
            sale.usage_key.clone(),
        )
    });
    let id = activation::next_id(own)?;
    let lease = Lease {
        instance: instance.to_owned(),
        activation: id,
        service: request.service.clone(),
        since_ms: now_ms,
    };
    for sale in candidates {
        if !take(shared, &sale, &lease, settings.offer_cap)? {
            continue;
        }
        let activation = Activation {
            id,
            sim: sale.id.clone(),
            usage_key: sale.usage_key.clone(),
            number: sale.number.clone(),
            service: request.service.clone(),
            country: sale.country.clone(),
            operator: sale.operator.clone(),
            issued_ms: now_ms,
            sum: request.sum,
            ended: None,
            checked_ms: None,
        };
        activation::open(own, &activation)?;
        return Ok(Some((activation, sale)));
    }
    Ok(None)
}

/// Whether the price offered reaches a floor. Without a floor any price does; with one, a
/// request that names no price does not.
fn pays(sum: Option<f64>, floor: Option<f64>) -> bool {
    match floor {
        None => true,
        Some(floor) => sum.is_some_and(|sum| sum >= floor),
    }
}

fn fits(sale: &OnSale, request: &NumberRequest, settings: &Settings) -> bool {
    sale.country == request.country
        && (request.operator == ANY_OPERATOR || sale.operator == request.operator)
        && !starts_with_any(
            &sale.number,
            request.excluded_prefixes.iter().map(String::as_str),
        )
        && pays(request.sum, sale.min_price)
        && sale
            .usage
            .unavailable(&sale.number, &request.service, settings.offer_cap)
            .is_none()
}

/// Leases the card if it can still take the service. A lost swap means another call wrote
/// the card since it was read: decide again on what the card holds now.
fn take(
    shared: &dyn KeyValue,
    sale: &OnSale,
    lease: &Lease,
    offer_cap: u32,
) -> Result<bool, String> {
    let mut bytes = sale.usage_bytes.clone();
    let mut usage = sale.usage.clone();
    for _ in 0..SWAPS_PER_CARD {
        if usage
            .unavailable(&sale.number, &lease.service, offer_cap)
            .is_some()
        {
            return Ok(false);
        }
        let leased = usage.leased(&sale.number, lease.clone());
        if shared.compare_and_swap(&sale.usage_key, bytes.as_deref(), &leased.encode())? {
            return Ok(true);
        }
        bytes = shared.get(&sale.usage_key)?;
        usage = match Usage::decode(bytes.as_deref()) {
            Ok(usage) => usage,
            Err(error) => {
                eprintln!("not offering {}: {error}", sale.usage_key);
                return Ok(false);
            }
        };
    }
    Ok(false)
}
