//! The data sparsifier: names, per-name configs, replacing data, masked and original data,
//! squashing, the saved state, and every bad input.

use shears_sparsify::{
    BlockNorm, Config, ConfigOverride, DataSparsifier, EntryState, HostTensor, Magnitude, Mask,
    Norm, SparsifyError, State,
};

fn t(shape: &[usize], values: &[f32]) -> HostTensor {
    HostTensor::new(shape.to_vec(), values.to_vec())
}

fn ramp(shape: &[usize]) -> HostTensor {
    let n: usize = shape.iter().product();
    HostTensor::new(shape.to_vec(), (0..n).map(|i| i as f32 - 3.5).collect())
}

fn block_sparsifier() -> DataSparsifier<BlockNorm> {
    DataSparsifier::new(BlockNorm, Config::default().with_zeros_per_block(2)).unwrap()
}

#[test]
fn bad_names_are_rejected() {
    let mut sp = block_sparsifier();
    assert_eq!(
        sp.add_data("enc.emb", ramp(&[2, 4]), None, true),
        Err(SparsifyError::DottedName("enc.emb".into()))
    );
    assert_eq!(
        sp.add_data("", ramp(&[2, 4]), None, true),
        Err(SparsifyError::EmptyName)
    );
    assert!(sp.is_empty());
    let unknown = Err(SparsifyError::UnknownName("nope".into()));
    assert_eq!(sp.mask("nope").map(|_| ()), unknown);
    assert_eq!(sp.data("nope", true).map(|_| ()), unknown);
    assert_eq!(sp.config("nope").map(|_| ()), unknown);
    assert_eq!(sp.set_sparsity_level("nope", 0.5), unknown);
    assert_eq!(sp.squash_mask(Some(&["nope"])), unknown);
}

#[test]
fn bad_configs_are_rejected() {
    let bad = |c: Config| DataSparsifier::new(Magnitude, c).map(|_| ()).unwrap_err();
    assert_eq!(
        bad(Config::default().with_sparsity_level(1.5)),
        SparsifyError::BadSparsity(1.5)
    );
    assert_eq!(
        bad(Config::default().with_sparsity_level(-0.1)),
        SparsifyError::BadSparsity(-0.1)
    );
    assert!(matches!(
        bad(Config::default().with_sparsity_level(f64::NAN)),
        SparsifyError::BadSparsity(_)
    ));
    assert_eq!(
        bad(Config::default().with_block([0, 4])),
        SparsifyError::BadBlock { block: [0, 4] }
    );
    assert_eq!(
        bad(Config::default().with_block([2, 2]).with_zeros_per_block(5)),
        SparsifyError::ZerosPerBlock {
            zeros: 5,
            block: [2, 2]
        }
    );
    assert!(matches!(
        bad(Config::default().with_threshold(f64::NAN)),
        SparsifyError::BadThreshold(_)
    ));

    // Per-name overrides are checked against the merged config; nothing is added.
    let mut sp = block_sparsifier();
    let over = ConfigOverride::default().sparsity_level(2.0);
    assert_eq!(
        sp.add_data("a", ramp(&[2, 4]), Some(over), true),
        Err(SparsifyError::BadSparsity(2.0))
    );
    // A block override that the inherited zeros_per_block (2) no longer fits.
    let over = ConfigOverride::default().block([1, 1]);
    assert_eq!(
        sp.add_data("a", ramp(&[2, 4]), Some(over), true),
        Err(SparsifyError::ZerosPerBlock {
            zeros: 2,
            block: [1, 1]
        })
    );
    assert!(sp.is_empty());
    assert_eq!(
        sp.set_sparsity_level("a", 0.5),
        Err(SparsifyError::UnknownName("a".into()))
    );

    // Values that do not fill the shape.
    let broken = HostTensor {
        shape: vec![2, 2],
        data: vec![1.0],
    };
    assert_eq!(
        sp.add_data("a", broken, None, true),
        Err(SparsifyError::DataLength {
            name: "a".into(),
            shape: vec![2, 2],
            len: 1
        })
    );

    // Three or more non-trivial axes are not a matrix for block criteria.
    sp.add_data("cube", ramp(&[2, 3, 4]), None, true).unwrap();
    assert_eq!(
        sp.step(),
        Err(SparsifyError::NotMatrix {
            name: "cube".into(),
            shape: vec![2, 3, 4]
        })
    );
}

#[test]
fn per_name_configs_override_defaults() {
    let mut sp = block_sparsifier();
    sp.add_data("a", ramp(&[2, 8]), None, true).unwrap();
    let over = ConfigOverride::default().sparsity_level(1.0).norm(Norm::L2);
    sp.add_data("b", ramp(&[2, 8]), Some(over), true).unwrap();
    assert_eq!(
        sp.config("a").unwrap(),
        &Config::default().with_zeros_per_block(2)
    );
    let b = sp.config("b").unwrap();
    assert_eq!((b.sparsity_level, b.norm, b.zeros()), (1.0, Norm::L2, 2));
    sp.step().unwrap();
    assert_eq!(sp.mask("a").unwrap().count_zeros(), 4); // 2 of 4 blocks
    assert_eq!(sp.mask("b").unwrap().count_zeros(), 8); // every block
    assert_eq!(sp.names().collect::<Vec<_>>(), ["a", "b"]);
}

#[test]
fn replacing_data_keeps_or_resets_the_mask() {
    let mut sp = block_sparsifier();
    let over = ConfigOverride::default().sparsity_level(0.25);
    sp.add_data("a", ramp(&[2, 8]), Some(over), true).unwrap();
    sp.step().unwrap();
    let stepped = sp.mask("a").unwrap().clone();
    assert_eq!(stepped.count_zeros(), 2);

    // Same shape, reuse: the mask stays; the old config stays under the new override.
    let replacement = t(&[2, 8], &[9.0; 16]);
    let over = ConfigOverride::default().zeros_per_block(1);
    sp.add_data("a", replacement.clone(), Some(over), true)
        .unwrap();
    assert_eq!(sp.mask("a").unwrap(), &stepped);
    let c = sp.config("a").unwrap();
    assert_eq!((c.sparsity_level, c.zeros()), (0.25, 1));
    assert_eq!(sp.data("a", true).unwrap().data, replacement.data);

    // No reuse: a fresh mask of ones.
    sp.add_data("a", replacement, None, false).unwrap();
    assert_eq!(sp.mask("a").unwrap(), &Mask::ones(&[2, 8]));

    // Another shape: a fresh mask of the new shape even with reuse.
    sp.step().unwrap();
    sp.add_data("a", ramp(&[4, 4]), None, true).unwrap();
    assert_eq!(sp.mask("a").unwrap(), &Mask::ones(&[4, 4]));
}

#[test]
fn data_original_masked_and_squashed() {
    let mut sp = block_sparsifier();
    let data = t(&[1, 8], &[1.0, -2.0, 3.0, 4.0, 0.5, -0.25, 8.0, 7.0]);
    sp.add_data("a", data.clone(), None, true).unwrap();
    sp.add_data("b", data.clone(), None, true).unwrap();
    sp.step().unwrap();
    // Blocks [1, -2, 3, 4] (mean 2.5) and [0.5, -0.25, 8, 7] (mean 3.94): the first is
    // chosen, its two smallest |x| are zeroed.
    let masked = vec![0.0, -0.0, 3.0, 4.0, 0.5, -0.25, 8.0, 7.0];
    assert_eq!(sp.data("a", false).unwrap().data, masked);
    assert_eq!(sp.data("a", true).unwrap().data, data.data);

    // Steps do not compound: the mask comes from the original data.
    sp.step().unwrap();
    assert_eq!(sp.data("a", false).unwrap().data, masked);

    // An unknown name in the list squashes nothing.
    assert!(sp.squash_mask(Some(&["a", "zz"])).is_err());
    assert!(!sp.is_squashed("a").unwrap());

    sp.squash_mask(Some(&["a"])).unwrap();
    assert!(sp.is_squashed("a").unwrap());
    assert!(!sp.is_squashed("b").unwrap());
    assert_eq!(sp.data("a", false).unwrap().data, masked);
    assert_eq!(
        sp.data("a", true).map(|_| ()),
        Err(SparsifyError::Squashed("a".into()))
    );
    assert_eq!(
        sp.mask("a").map(|_| ()),
        Err(SparsifyError::Squashed("a".into()))
    );
    // Squashed names are skipped by step and squashing again is a no-op.
    sp.step().unwrap();
    sp.squash_mask(None).unwrap();
    assert_eq!(sp.data("a", false).unwrap().data, masked);
    assert_eq!(sp.data("b", false).unwrap().data, masked);
    assert_eq!(sp.len(), 2);
}

#[test]
fn mask_json_is_a_hex_bit_string() {
    let mask = Mask::from_bits(
        vec![3, 3],
        vec![true, false, true, true, false, false, false, false, true],
    )
    .unwrap();
    assert!((mask.sparsity() - 5.0 / 9.0).abs() < 1e-12);
    let json = serde_json::to_value(&mask).unwrap();
    assert_eq!(json, serde_json::json!({"shape": [3, 3], "bits": "0d01"}));
    let back: Mask = serde_json::from_value(json).unwrap();
    assert_eq!(back, mask);
    assert!(serde_json::from_str::<Mask>(r#"{"shape": [3, 3], "bits": "0d"}"#).is_err());
    assert!(serde_json::from_str::<Mask>(r#"{"shape": [3, 3], "bits": "0x01"}"#).is_err());
    assert!(Mask::from_bits(vec![2, 2], vec![true; 3]).is_err());
}

#[test]
fn state_round_trips_through_json_exactly() {
    let mut sp = block_sparsifier();
    // 0.1 + 0.2 needs 17 digits: it must still come back bit for bit.
    let over = ConfigOverride::default().sparsity_level(0.1 + 0.2);
    sp.add_data("a", ramp(&[3, 7]), Some(over), true).unwrap();
    sp.add_data("b", ramp(&[5, 4]), None, true).unwrap();
    sp.add_data("c", ramp(&[2, 4]), None, true).unwrap();
    sp.step().unwrap();
    sp.squash_mask(Some(&["c"])).unwrap();
    let state = sp.state();
    assert_eq!(state.steps, 1);
    assert_eq!(state.entries["c"].mask, None);

    let json = serde_json::to_string_pretty(&state).unwrap();
    let back: State = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
    assert_eq!(
        back.entries["a"].config.sparsity_level.to_bits(),
        (0.1f64 + 0.2).to_bits()
    );

    // A fresh sparsifier with the same data takes the state over.
    let mut other = block_sparsifier();
    other.add_data("a", ramp(&[3, 7]), None, true).unwrap();
    other.add_data("b", ramp(&[5, 4]), None, true).unwrap();
    other
        .add_data("c", sp.data("c", false).unwrap().into_owned(), None, true)
        .unwrap();
    other.load_state(back).unwrap();
    assert_eq!(other.state(), state);
    assert_eq!(other.mask("a").unwrap(), sp.mask("a").unwrap());
    assert!(other.is_squashed("c").unwrap());
    assert_eq!(other.step_count(), 1);
}

#[test]
fn load_state_checks_names_and_shapes() {
    let mut sp = block_sparsifier();
    sp.add_data("a", ramp(&[2, 4]), None, true).unwrap();
    sp.add_data("b", ramp(&[2, 4]), None, true).unwrap();
    let mut state = sp.state();
    state.entries.remove("a");
    state.entries.insert(
        "z".into(),
        EntryState {
            config: Config::default(),
            mask: None,
        },
    );
    assert_eq!(
        sp.load_state(state),
        Err(SparsifyError::StateMismatch {
            missing: vec!["a".into()],
            unexpected: vec!["z".into()],
        })
    );

    let mut state = sp.state();
    state.entries.get_mut("b").unwrap().mask = Some(Mask::zeros(&[4, 2]));
    assert!(matches!(
        sp.load_state(state),
        Err(SparsifyError::Shape { .. })
    ));
    // Nothing was loaded.
    assert_eq!(sp.mask("b").unwrap(), &Mask::ones(&[2, 4]));
}
