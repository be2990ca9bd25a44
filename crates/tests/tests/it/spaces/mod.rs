//! Integration tests of `shears-spaces`: identity, validation, keep plans, masks, errors.

use std::collections::BTreeMap;

use shears_spaces::{Dim, HostTensor, Registry, Space, SpaceError, TensorMap};

/// A two-layer toy: `up` [hidden, inner], `down` [inner, hidden], a LayerNorm in hidden,
/// and a `head` whose output lives in its own space of the same size as hidden.
fn toy() -> (Registry, TensorMap) {
    let hidden = Space::new("hidden", 4);
    let inner = Space::blocked("inner", 3, 2);
    let out = Dim::from(4).resolve("out");
    let mut reg = Registry::new();
    let mut s = reg.scope("");
    s.claim("up.weight", 0, &hidden);
    s.claim("up.weight", 1, &inner);
    s.claim("up.bias", 0, &inner);
    s.claim("down.weight", 0, &inner);
    s.claim("down.weight", 1, &hidden);
    s.claim("norm.weight", 0, &hidden);
    s.claim("head.weight", 0, &hidden);
    s.claim("head.weight", 1, &out);
    let mut t = TensorMap::new();
    let seq = |n: usize| (0..n).map(|i| i as f32).collect::<Vec<_>>();
    t.insert("up.weight".into(), HostTensor::new(vec![4, 6], seq(24)));
    t.insert("up.bias".into(), HostTensor::new(vec![6], seq(6)));
    t.insert("down.weight".into(), HostTensor::new(vec![6, 4], seq(24)));
    t.insert("norm.weight".into(), HostTensor::new(vec![4], seq(4)));
    t.insert("head.weight".into(), HostTensor::new(vec![4, 4], seq(16)));
    (reg, t)
}

fn shapes(t: &TensorMap) -> BTreeMap<String, Vec<usize>> {
    shears_spaces::shapes(t)
}

#[test]
fn identity_not_size() {
    let a = Space::new("a", 4);
    let b = Space::new("b", 4);
    assert_ne!(a, b);
    assert_eq!(a, a.clone());
    assert_eq!(Dim::from(&a).resolve("x"), a);
    assert_ne!(Dim::from(4).resolve("x"), a);
    let (reg, _) = toy();
    let hidden = reg.space("hidden").unwrap();
    let out = reg.space("out").unwrap();
    assert_eq!(hidden.size(), out.size());
    let hidden_paths: Vec<_> = reg
        .members(hidden)
        .map(|m| (m.path.as_str(), m.axis))
        .collect();
    assert_eq!(
        hidden_paths,
        [
            ("up.weight", 0),
            ("down.weight", 1),
            ("norm.weight", 0),
            ("head.weight", 0)
        ]
    );
}

#[test]
fn validate_accepts_exact_cover() {
    let (reg, t) = toy();
    reg.validate(&shapes(&t)).unwrap();
}

#[test]
fn validate_rejects_gaps_doubles_and_sizes() {
    let (reg, mut t) = toy();
    t.insert("extra".into(), HostTensor::new(vec![2], vec![0.0; 2]));
    assert_eq!(
        reg.validate(&shapes(&t)),
        Err(SpaceError::Unclaimed {
            path: "extra".into(),
            axis: 0,
            shape: vec![2]
        })
    );
    let (mut reg, t) = toy();
    reg.free("up.bias", 0);
    assert!(matches!(
        reg.validate(&shapes(&t)),
        Err(SpaceError::ClaimedTwice { ref path, axis: 0, .. }) if path == "up.bias"
    ));
    let (reg, mut t) = toy();
    t.insert("norm.weight".into(), HostTensor::new(vec![5], vec![0.0; 5]));
    assert!(matches!(
        reg.validate(&shapes(&t)),
        Err(SpaceError::SizeMismatch {
            expected: 4,
            found: 5,
            ..
        })
    ));
    let (reg, mut t) = toy();
    t.remove("up.bias");
    assert_eq!(
        reg.validate(&shapes(&t)),
        Err(SpaceError::UnknownParameter {
            path: "up.bias".into()
        })
    );
}

#[test]
fn keep_slices_every_member_consistently() {
    let (reg, mut t) = toy();
    // Units are blocks of width 2: keeping units 2 and 0 keeps indices 0, 1, 4, 5.
    let plan = reg.plan_keep("inner", &[2, 0]).unwrap();
    assert_eq!(plan.kept, [0, 2]);
    plan.apply(&mut t).unwrap();
    assert_eq!(t["up.bias"].data, [0.0, 1.0, 4.0, 5.0]);
    assert_eq!(t["up.weight"].shape, [4, 4]);
    assert_eq!(t["up.weight"].data[..4], [0.0, 1.0, 4.0, 5.0]);
    assert_eq!(t["down.weight"].shape, [4, 4]);
    assert_eq!(t["down.weight"].data[4..8], [4.0, 5.0, 6.0, 7.0]);
    // hidden and out are untouched.
    assert_eq!(t["head.weight"].shape, [4, 4]);
    assert_eq!(reg.unit_mask("inner", &[2, 0]).unwrap(), [1.0, 0.0, 1.0]);
}

#[test]
fn keep_rejects_bad_requests_without_touching_tensors() {
    let (reg, t) = toy();
    let check = |space: &str, keep: &[usize], want: &str| {
        let err = reg.plan_keep(space, keep).unwrap_err();
        assert_eq!(err.to_string(), want);
    };
    check(
        "nope",
        &[0],
        "unknown space `nope` (known: hidden, inner, out)",
    );
    check(
        "inner",
        &[3],
        "unit 3 is out of range for space `inner` of 3 units",
    );
    check("inner", &[1, 1], "unit 1 of space `inner` is listed twice");
    check(
        "inner",
        &[],
        "keeping 0 of 3 units of space `inner` is below its minimum of 1",
    );
    let hinted = Space::new("heads", 2).with_hint("remove the attention block instead");
    let mut reg2 = Registry::new();
    reg2.register(&hinted);
    assert_eq!(
        reg2.plan_keep("heads", &[]).unwrap_err().to_string(),
        "keeping 0 of 2 units of space `heads` is below its minimum of 1: \
         remove the attention block instead"
    );
    // A plan applied to the wrong tensors fails before changing anything.
    let plan = reg.plan_keep("hidden", &[0, 1]).unwrap();
    let mut small = t.clone();
    small.remove("head.weight");
    let before = small.clone();
    assert!(plan.apply(&mut small).is_err());
    assert_eq!(small, before);
}

#[test]
fn host_tensor_select_and_transpose() {
    let t = HostTensor::new(vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(t.select(1, &[2, 0]).data, [3.0, 1.0, 6.0, 4.0]);
    assert_eq!(t.select(0, &[1]).data, [4.0, 5.0, 6.0]);
    assert_eq!(t.transpose().data, [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    assert_eq!(t.transpose().transpose(), t);
}
