//! Leader election through a `coordination.k8s.io/v1` Lease, so two controller replicas are safe:
//! only the holder reconciles. The decision is pure ([`decide`]); [`LeaseKeeper::look`] applies it
//! with the Lease's resourceVersion, so two replicas racing for it cannot both win.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};

use super::controller::FIELD_MANAGER;

fn post_params() -> PostParams {
    PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseAction {
    /// Nobody holds it: create it.
    Create,
    /// We hold it, or its holder let it expire: take or renew it.
    Take { transition: bool },
    /// Someone else holds a live lease, until this moment (its renewal plus its duration).
    Follow { until: Timestamp },
}

/// What to do with the Lease, given who holds it, when it was renewed, and now. A lease runs out
/// at its renewal plus its duration, to the microsecond the API server keeps.
pub fn decide(lease: Option<&LeaseSpec>, me: &str, now: Timestamp) -> LeaseAction {
    let Some(spec) = lease else { return LeaseAction::Create };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder == me {
        return LeaseAction::Take { transition: false };
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    let until = spec.renew_time.as_ref().and_then(|t| t.0.checked_add(duration).ok());
    match until {
        Some(until) if !holder.is_empty() && now < until => LeaseAction::Follow { until },
        _ => LeaseAction::Take { transition: true },
    }
}

/// When to look at the Lease again: after `retry`, or as soon as the holder's term ends when that
/// comes first (a follower of a killed leader takes over when its Lease runs out, not up to one
/// retry later).
pub fn next_look(now: Timestamp, until: Option<Timestamp>, retry: std::time::Duration) -> std::time::Duration {
    let Some(until) = until else { return retry };
    let left = now.duration_until(until);
    // A few milliseconds past the end, so the next look finds the term over.
    let margin = SignedDuration::from_millis(20);
    match std::time::Duration::try_from(left + margin) {
        Ok(d) => d.min(retry),
        Err(_) => std::time::Duration::ZERO,
    }
}

/// What a look at the Lease found: whether this replica holds it now, and when the other holder's
/// term ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Look {
    pub held: bool,
    pub until: Option<Timestamp>,
}

pub struct LeaseKeeper {
    pub api: Api<Lease>,
    pub name: String,
    pub identity: String,
    pub duration_secs: i32,
}

impl LeaseKeeper {
    /// Takes or renews the Lease when we may; says whether we lead now, and else until when the
    /// holder's term runs.
    pub async fn look(&self) -> Result<Look, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let action = decide(current.as_ref().and_then(|l| l.spec.as_ref()), &self.identity, now);
        let spec = |transitions: i32| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration_secs),
            renew_time: Some(MicroTime(now)),
            acquire_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        };
        match (action, current) {
            (LeaseAction::Follow { until }, _) => Ok(Look { held: false, until: Some(until) }),
            (LeaseAction::Create, _) | (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                    spec: Some(spec(0)),
                };
                match self.api.create(&post_params(), &lease).await {
                    Ok(_) => Ok(Look { held: true, until: None }),
                    // Another replica created it first.
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(Look { held: false, until: None }),
                    Err(e) => Err(e),
                }
            }
            (LeaseAction::Take { transition }, Some(mut lease)) => {
                let old = lease.spec.clone().unwrap_or_default();
                let mut new = spec(old.lease_transitions.unwrap_or(0) + i32::from(transition));
                if !transition {
                    new.acquire_time = old.acquire_time;
                }
                lease.spec = Some(new);
                // replace() sends the resourceVersion we read: a concurrent change makes it 409.
                match self.api.replace(&self.name, &post_params(), &lease).await {
                    Ok(_) => Ok(Look { held: true, until: None }),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(Look { held: false, until: None }),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Gives the Lease up on the way out, when we hold it, so a follower takes it at its next
    /// look instead of waiting for it to expire. Returns whether we released it.
    pub async fn release(&self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else { return Ok(false) };
        let Some(spec) = lease.spec.as_mut() else { return Ok(false) };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self.api.replace(&self.name, &post_params(), &lease).await {
            Ok(_) => Ok(true),
            // Changed under us: someone else holds it now.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn the_decision_table() {
        let now = Timestamp::from_second(1000).unwrap();
        assert_eq!(decide(None, "a", now), LeaseAction::Create);
        assert_eq!(decide(Some(&spec("a", 999)), "a", now), LeaseAction::Take { transition: false });
        let until = Timestamp::from_second(1005).unwrap();
        assert_eq!(decide(Some(&spec("b", 990)), "a", now), LeaseAction::Follow { until });
        assert_eq!(decide(Some(&spec("b", 980)), "a", now), LeaseAction::Take { transition: true });
        assert_eq!(decide(Some(&spec("", 999)), "a", now), LeaseAction::Take { transition: true });
        let never = LeaseSpec { holder_identity: Some("b".into()), ..Default::default() };
        assert_eq!(decide(Some(&never), "a", now), LeaseAction::Take { transition: true });
    }

    /// A lease runs out at its renewal plus its duration to the microsecond, not a second later.
    #[test]
    fn the_term_ends_to_the_microsecond() {
        let renewed = Timestamp::from_millisecond(100_500).unwrap();
        let lease = LeaseSpec { renew_time: Some(MicroTime(renewed)), ..spec("b", 0) };
        let at = |ms: i64| Timestamp::from_millisecond(ms).unwrap();
        let until = at(115_500);
        assert_eq!(decide(Some(&lease), "a", at(115_499)), LeaseAction::Follow { until });
        assert_eq!(decide(Some(&lease), "a", at(115_500)), LeaseAction::Take { transition: true });
    }

    /// A follower looks again when the holder's term ends if that is before its next retry.
    #[test]
    fn the_next_look_comes_when_the_term_ends() {
        let retry = std::time::Duration::from_secs(2);
        let at = |ms: i64| Timestamp::from_millisecond(ms).unwrap();
        assert_eq!(next_look(at(1_000), None, retry), retry);
        assert_eq!(next_look(at(1_000), Some(at(9_000)), retry), retry);
        assert_eq!(next_look(at(1_000), Some(at(1_500)), retry), std::time::Duration::from_millis(520));
        assert_eq!(next_look(at(1_000), Some(at(900)), retry), std::time::Duration::ZERO);
    }
}
