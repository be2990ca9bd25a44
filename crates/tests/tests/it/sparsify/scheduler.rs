//! Schedulers: the cubic curve against torch's verified sequence and the formula, the
//! lambda curve, the ordering guard, and bad parameters.

use shears_sparsify::{
    BlockNorm, Config, ConfigOverride, Cubic, CubicScheduler, DataSparsifier, HostTensor, Lambda,
    LambdaScheduler, Schedule, SparsifyError,
};

fn sparsifier(levels: &[(&str, f64)]) -> DataSparsifier<BlockNorm> {
    let mut sp = DataSparsifier::new(BlockNorm, Config::default()).unwrap();
    for &(name, s) in levels {
        let data = HostTensor::new(vec![4, 8], (0..32).map(|i| i as f32).collect());
        let over = ConfigOverride::default().sparsity_level(s);
        sp.add_data(name, data, Some(over), true).unwrap();
    }
    sp
}

fn level(sp: &DataSparsifier<BlockNorm>, name: &str) -> f64 {
    sp.config(name).unwrap().sparsity_level
}

/// `s_f + (s_0 - s_f)(1 - (t - t_0)/(n Δt))³`, clamped to `[s_0, s_f]`, 0 before `t_0` if
/// initially zero (Zhu & Gupta; torch's CubicSL).
fn cubic_formula(c: &Cubic, sf: f64, t: usize) -> f64 {
    let (t, t0) = (t as f64, c.init_t as f64);
    if c.initially_zero && t < t0 {
        return 0.0;
    }
    let n_dt = (c.delta_t * c.total_t) as f64;
    let st = sf + (c.init_sl - sf) * (1.0 - (t - t0) / n_dt).powi(3);
    st.min(sf).max(c.init_sl)
}

#[test]
fn cubic_follows_torch_and_the_formula() {
    let cubic = Cubic {
        init_sl: 0.1,
        init_t: 2,
        delta_t: 3,
        total_t: 4,
        initially_zero: true,
    };
    // torch 2.15 CubicSL, t = 0..15 (notes/reference.md B.5).
    let torch = [
        0.0, 0.0, 0.1, 0.260822, 0.394907, 0.504687, 0.592593, 0.661053, 0.7125, 0.749363,
        0.774074, 0.789062, 0.796759, 0.799595, 0.8, 0.8,
    ];
    let mut sp = sparsifier(&[("a", 0.8), ("b", 0.4)]);
    let mut sched = CubicScheduler::new(cubic, &mut sp).unwrap();
    for (t, &want) in torch.iter().enumerate() {
        if t > 0 {
            sp.step().unwrap();
            sched.step(&mut sp).unwrap();
        }
        assert_eq!(sched.epoch(), t);
        let a = level(&sp, "a");
        assert!((a - want).abs() < 1e-6, "t = {t}: {a} vs torch {want}");
        assert!((a - cubic_formula(&cubic, 0.8, t)).abs() < 1e-12, "t = {t}");
        let b = level(&sp, "b");
        assert!((b - cubic_formula(&cubic, 0.4, t)).abs() < 1e-12, "t = {t}");
        assert_eq!(sched.last_levels()["a"], a);
    }
    assert_eq!(sched.base_levels()["a"], 0.8);
    // Without initially_zero the level before t_0 is s_0.
    let flat = Cubic {
        initially_zero: false,
        ..cubic
    };
    assert_eq!(flat.level(0.8, 0), 0.1);
    // s_0 > s_f: the clamp gives s_0 throughout.
    assert_eq!(
        Cubic {
            init_sl: 0.9,
            ..cubic
        }
        .level(0.5, 7),
        0.9
    );
}

#[test]
fn lambda_scales_the_base_level() {
    let mut sp = sparsifier(&[("a", 0.5)]);
    let mut sched = LambdaScheduler::new(Lambda(|e: usize| e as f64 / 4.0), &mut sp).unwrap();
    assert_eq!(level(&sp, "a"), 0.0); // epoch 0 is applied at construction
    for e in 1..=2 {
        sp.step().unwrap();
        sched.step(&mut sp).unwrap();
        assert_eq!(level(&sp, "a"), 0.5 * e as f64 / 4.0);
    }
    // Epoch 1 gives 0.5 · 3 = 1.5, out of range: an error, nothing written.
    let mut sp = sparsifier(&[("a", 0.5)]);
    let mut sched = LambdaScheduler::new(Lambda(|e: usize| 1.0 + 2.0 * e as f64), &mut sp).unwrap();
    sp.step().unwrap();
    assert_eq!(sched.step(&mut sp), Err(SparsifyError::BadSparsity(1.5)));
    assert_eq!(level(&sp, "a"), 0.5);
    assert_eq!(sched.epoch(), 0);
}

#[test]
fn scheduler_before_sparsifier_is_an_error() {
    let mut sp = sparsifier(&[("a", 0.5)]);
    sp.step().unwrap(); // before the scheduler exists: does not count
    let mut sched = CubicScheduler::new(Cubic::default(), &mut sp).unwrap();
    assert_eq!(
        sched.step(&mut sp),
        Err(SparsifyError::SchedulerBeforeSparsifier)
    );
    assert_eq!(sched.epoch(), 0);
    sp.step().unwrap();
    sched.step(&mut sp).unwrap();
    // Only the first step is guarded (as torch's warning).
    sched.step(&mut sp).unwrap();
    assert_eq!(sched.epoch(), 2);
}

#[test]
fn bad_schedules_are_rejected() {
    let mut sp = sparsifier(&[("a", 0.5)]);
    let zero_dt = Cubic {
        delta_t: 0,
        ..Cubic::default()
    };
    assert_eq!(
        CubicScheduler::new(zero_dt, &mut sp).map(|_| ()),
        Err(SparsifyError::BadSchedule {
            what: "delta_t",
            value: 0.0
        })
    );
    let lambda = LambdaScheduler::new(Lambda(|_: usize| -1.0), &mut sp).map(|_| ());
    assert_eq!(lambda, Err(SparsifyError::BadSparsity(-0.5)));
    assert_eq!(level(&sp, "a"), 0.5);
}
