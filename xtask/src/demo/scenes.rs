//! The scenes of the demo, in order: a sealed mandate spent at a merchant,
//! an escrow paid on photo proofs, SAKA grains.

use serde_json::json;

use super::step::{Expect, Photo, SITE_LAT, SITE_LNG, SITE_RADIUS_M, Scene, Step, Upload};

/// The scenes, in order.
pub fn scenes() -> Vec<Scene> {
    vec![mandates_and_purchases(), escrow_with_photo_proofs(), saka_grains()]
}

fn mandates_and_purchases() -> Scene {
    let purchase = |amount: &str| {
        json!({
            "sender_id": "{alice.id}", "beneficiary_id": "{bob.id}", "merchant_id": "{merchant.id}",
            "amount": amount, "currency": "USD",
        })
    };
    let mut steps = people_and_catalogue();
    steps.extend([
        Step::post(
            "alice seals 100.00 USD to bob for 30 days",
            "alice.key",
            "/mandates",
            json!({
                "sender_id": "{alice.id}", "beneficiary_id": "{bob.id}", "total_amount": "100.00",
                "currency": "USD", "expires_at": "{in_30_days}",
            }),
        )
        .field("/status", "ACTIVE")
        .save("mandate.id", "/id"),
        Step::job("bob buys for 30.00 at Marché Central", "bob.key", "/spend/purchases", purchase("30.00")),
        Step::job("bob buys for 50.00 at Marché Central", "bob.key", "/spend/purchases", purchase("50.00")),
        Step::job("bob tries 40.00 with 20.00 left", "bob.key", "/spend/purchases", purchase("40.00"))
            .expect(Expect::Failed("MANDATE_EXHAUSTED")),
        Step::job("bob buys for the last 20.00", "bob.key", "/spend/purchases", purchase("20.00")),
        Step::get("bob reads the mandate", "bob.key", "/mandates/{mandate.id}")
            .field("/status", "CONSUMED")
            .field("/spent_amount", "100.00")
            .field("/remaining_amount", "0.00"),
        Step::job("alice tries to spend bob's mandate herself", "alice.key", "/spend/purchases", purchase("5.00"))
            .expect(Expect::Refused(&["FORBIDDEN", "MANDATE_REQUIRED"])),
    ]);
    Scene { title: "A sealed mandate: alice funds 100.00 USD that bob may spend only on food", steps }
}

/// alice and bob with their keys, the category FOOD, a merchant in it, and
/// bob allowed to spend on FOOD.
fn people_and_catalogue() -> Vec<Step> {
    vec![
        Step::post(
            "admin creates user alice",
            "admin.key",
            "/users",
            json!({"username": "alice", "email": "alice@example.com"}),
        )
        .save("alice.id", "/id"),
        Step::post(
            "admin creates user bob",
            "admin.key",
            "/users",
            json!({"username": "bob", "email": "bob@example.com"}),
        )
        .save("bob.id", "/id"),
        Step::post(
            "admin gives alice a sender key",
            "admin.key",
            "/api-keys",
            json!({"user_id": "{alice.id}", "role": "sender", "name": "demo alice"}),
        )
        .save("alice.key", "/key"),
        Step::post(
            "admin gives bob a beneficiary key",
            "admin.key",
            "/api-keys",
            json!({"user_id": "{bob.id}", "role": "beneficiary", "name": "demo bob"}),
        )
        .save("bob.key", "/key"),
        Step::post(
            "admin creates the category FOOD",
            "admin.key",
            "/spend/categories",
            json!({"code": "FOOD", "label": "Food"}),
        )
        .save("food.id", "/id"),
        Step::post(
            "admin creates the merchant Marché Central in FOOD",
            "admin.key",
            "/spend/merchants",
            json!({"name": "Marché Central", "category_id": "{food.id}"}),
        )
        .save("merchant.id", "/id"),
        Step::post(
            "admin allows bob to spend on FOOD",
            "admin.key",
            "/spend/allow",
            json!({"owner_id": "{bob.id}", "category_id": "{food.id}"}),
        )
        .field("/status", "added"),
    ]
}

fn escrow_with_photo_proofs() -> Scene {
    let upload = |milestone_idx, photo| Upload { escrow: "{escrow.id}", milestone_idx, source: "camera", photo };
    let mut steps = funded_escrow();
    steps.extend([
        Step::upload(
            "bob uploads a photo of the foundations",
            "bob.key",
            upload(1, Photo { seed: 1, north_m: 40.0, minutes_ago: 10 }),
        )
        .field("/result/status", "APPROVED")
        .save("proof1.id", "/proof_id"),
        Step::get("alice reads the proof", "alice.key", "/proofs/{proof1.id}").field("/status", "APPROVED"),
        Step::poll("the simulator's webhook settles the payout of 120.00", "alice.key", "/escrows/{escrow.id}")
            .field("/milestones/0/status", "PAID")
            .field("/payments/0/status", "SETTLED")
            .field("/paid_amount", "120.00")
            .watch("/status")
            .save("payment1.id", "/payments/0/id"),
        Step::get("bob reads his payment", "bob.key", "/payments/{payment1.id}")
            .field("/status", "SETTLED")
            .field("/amount", "120.00"),
        Step::upload(
            "bob uploads a roof photo taken 1 km away",
            "bob.key",
            upload(2, Photo { seed: 2, north_m: 1_000.0, minutes_ago: 8 }),
        )
        .expect(Expect::Failed("GEOFENCE_VIOLATION"))
        .save("proof2.id", "/proof_id"),
        Step::get("alice reads the rejected proof", "alice.key", "/proofs/{proof2.id}")
            .field("/status", "REJECTED")
            .field("/rejection_code", "GEOFENCE_VIOLATION"),
        Step::get("milestone 2 still waits for a proof", "alice.key", "/escrows/{escrow.id}")
            .field("/status", "FUNDED")
            .field("/milestones/1/status", "WAITING")
            .field("/balance", "180.00"),
        Step::upload(
            "bob uploads a roof photo taken on the site",
            "bob.key",
            upload(2, Photo { seed: 3, north_m: -35.0, minutes_ago: 5 }),
        )
        .field("/result/status", "APPROVED"),
        Step::poll("the second payout settles and the escrow is RELEASED", "alice.key", "/escrows/{escrow.id}")
            .field("/status", "RELEASED")
            .field("/milestones/1/status", "PAID")
            .field("/payments/1/status", "SETTLED")
            .field("/paid_amount", "300.00")
            .field("/balance", "0.00"),
        Step::sim_get("psp-sim: its signed webhooks, both delivered", "/sim/webhooks")
            .field("/0/type", "payment.settled")
            .field("/0/delivered", "true")
            .field("/1/type", "payment.settled")
            .field("/1/delivered", "true"),
    ]);
    Scene {
        title: "An escrow paid on photo proofs: alice hires bob for 300.00 USD, two fenced milestones on a site in Abidjan",
        steps,
    }
}

/// alice's escrow for bob, two fenced PHOTO milestones, funded.
fn funded_escrow() -> Vec<Step> {
    let fence = json!({"lat": SITE_LAT, "lng": SITE_LNG, "radius_m": SITE_RADIUS_M});
    let milestone = |idx: u32, label: &str, amount: &str| json!({"idx": idx, "label": label, "amount": amount, "proof_type": "PHOTO", "geofence": fence});
    vec![
        Step::post(
            "alice opens an escrow of 300.00 USD for bob",
            "alice.key",
            "/escrows",
            json!({
                "client_id": "{alice.id}", "provider_id": "{bob.id}", "amount_total": "300.00",
                "currency": "USD", "release_conditions": {"milestones": "a geotagged photo of each"},
                "deadline_at": "{in_30_days}",
            }),
        )
        .field("/status", "DRAFT")
        .save("escrow.id", "/id"),
        Step::post(
            "alice adds milestone 1: foundations, 120.00, PHOTO",
            "alice.key",
            "/escrows/{escrow.id}/milestones",
            milestone(1, "foundations", "120.00"),
        )
        .field("/status", "WAITING"),
        Step::post(
            "alice adds milestone 2: roof, 180.00, PHOTO",
            "alice.key",
            "/escrows/{escrow.id}/milestones",
            milestone(2, "roof", "180.00"),
        )
        .field("/status", "WAITING"),
        Step::job("alice deposits 300.00", "alice.key", "/escrows/{escrow.id}/deposit", json!({"amount": "300.00"}))
            .field("/result/status", "FUNDED")
            .field("/result/balance", "300.00"),
    ]
}

fn saka_grains() -> Scene {
    let harvest = || json!({"user_id": "{bob.id}", "reason": "CONTENT_READ"});
    let adjust = |amount: u32, note: &str| json!({"user_id": "{bob.id}", "amount": amount, "note": note});
    Scene {
        title: "SAKA grains and four eyes on admin power: a second admin made on the host, an admin key asked over HTTP \
                waits for them, bob harvests to the daily limit, a large adjustment needs an independent second admin, \
                the daily cap holds",
        steps: vec![
            Step::host_admin(
                "the operator makes a second admin, root2",
                "keys create --user root2 --role admin",
                "root2.id",
                "root2.key",
            ),
            Step::post(
                "admin creates user carol",
                "admin.key",
                "/users",
                json!({"username": "carol", "email": "carol@example.com"}),
            )
            .save("carol.id", "/id"),
            Step::post(
                "admin asks admin power for carol over HTTP",
                "admin.key",
                "/api-keys",
                json!({"user_id": "{carol.id}", "role": "admin", "name": "demo carol"}),
            )
            .expect(Expect::Status(202))
            .field("/status", "PENDING_APPROVAL")
            .field("/code", "ADMIN_GRANT_PENDING")
            .save("grant.id", "/id")
            .save("carol.key", "/key"),
            Step::get("carol's key does not work while it waits", "carol.key", "/me")
                .expect(Expect::Refused(&["AUTH_INVALID"])),
            Step::post(
                "admin tries to approve their own request",
                "admin.key",
                "/admin-grants/{grant.id}/approve",
                json!({}),
            )
            .expect(Expect::Refused(&["ADMIN_SELF_APPROVAL"])),
            Step::post(
                "root2 approves carol's admin power",
                "root2.key",
                "/admin-grants/{grant.id}/approve",
                json!({}),
            )
            .expect(Expect::Status(200))
            .field("/status", "APPROVED")
            .field("/approved_by", "{root2.id}"),
            Step::get("carol's key works now", "carol.key", "/me").field("/key/role", "admin"),
            Step::job("admin harvests CONTENT_READ for bob (1 of 3)", "admin.key", "/saka/harvest", harvest())
                .field("/result/amount", "10"),
            Step::job("admin harvests CONTENT_READ for bob (2 of 3)", "admin.key", "/saka/harvest", harvest())
                .field("/result/amount", "10"),
            Step::job("admin harvests CONTENT_READ for bob (3 of 3)", "admin.key", "/saka/harvest", harvest())
                .field("/result/amount", "10"),
            Step::job("a 4th CONTENT_READ today credits nothing", "admin.key", "/saka/harvest", harvest())
                .field("/result/credited", "0")
                .field("/result/reason", "DAILY_LIMIT"),
            Step::get("bob reads his wallet", "bob.key", "/saka/wallets/{bob.id}")
                .field("/balance", "30")
                .field("/total_harvested", "30"),
            Step::job(
                "admin grants bob 600: above 500, pending",
                "admin.key",
                "/saka/adjustments",
                adjust(600, "community award"),
            )
            .field("/result/status", "PENDING_APPROVAL")
            .save("adjustment.id", "/result/id"),
            Step::job(
                "admin tries to approve their own request",
                "admin.key",
                "/saka/adjustments/{adjustment.id}/approve",
                json!({}),
            )
            .expect(Expect::Refused(&["SAKA_SELF_APPROVAL"])),
            Step::job(
                "carol, whose power admin asked for, tries to approve",
                "carol.key",
                "/saka/adjustments/{adjustment.id}/approve",
                json!({}),
            )
            .expect(Expect::Refused(&["APPROVER_NOT_INDEPENDENT"])),
            Step::job("root2 approves the 600", "root2.key", "/saka/adjustments/{adjustment.id}/approve", json!({}))
                .field("/result/status", "APPLIED")
                .field("/result/approved_by", "{root2.id}"),
            Step::job("admin grants bob 500 more: 1,100 today", "admin.key", "/saka/adjustments", adjust(500, "bonus"))
                .expect(Expect::Failed("SAKA_DAILY_CAP_REACHED")),
            Step::job("admin grants bob 400: exactly the cap", "admin.key", "/saka/adjustments", adjust(400, "bonus"))
                .field("/result/status", "APPLIED"),
            Step::get("bob reads his wallet", "bob.key", "/saka/wallets/{bob.id}")
                .field("/balance", "1030")
                .field("/manual_adjust_today", "1000"),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::step::Target;
    use serde_json::Value;

    /// The `{name}` placeholders of a template.
    fn names_in(text: &str) -> Vec<String> {
        text.split('{').skip(1).filter_map(|piece| piece.split_once('}').map(|(name, _)| name.to_string())).collect()
    }

    fn strings_in(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::String(s) => out.push(s.clone()),
            Value::Array(items) => items.iter().for_each(|v| strings_in(v, out)),
            Value::Object(map) => map.values().for_each(|v| strings_in(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_step_uses_only_values_saved_before_it() {
        let mut known: Vec<String> = vec!["admin.key".into(), "in_30_days".into()];
        for scene in scenes() {
            for step in &scene.steps {
                let mut texts = vec![step.path.to_string()];
                if let Some(body) = &step.body {
                    strings_in(body, &mut texts);
                }
                if let Some(upload) = &step.upload {
                    texts.push(upload.escrow.to_string());
                }
                texts.extend(step.fields.iter().map(|(_, want)| want.to_string()));
                let mut used: Vec<String> = texts.iter().flat_map(|t| names_in(t)).collect();
                if step.target == Target::Api {
                    used.push(step.key.to_string());
                }
                for name in used {
                    assert!(known.contains(&name), "step `{}` uses `{name}` before a step saves it", step.title);
                }
                known.extend(step.save.iter().map(|(name, _)| name.to_string()));
            }
        }
    }
}
