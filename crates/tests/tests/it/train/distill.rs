//! Distillation: the loss is zero for the teacher itself and positive otherwise, its
//! gradient reaches the student and the layer map (never the teacher), the map trains, and
//! the layer matching is CoFi's monotone one.

use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Param};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use shears_gates::Draw;
use shears_layers::{ModelConfig, ModelInput, Transformer};
use shears_pruners::ClassifierHead;
use shears_train::distill::{
    DistillSection, Distilled, LayerMap, distill_loss, match_layers, teacher_targets, with_map,
};
use shears_train::task::{TaskModel, trainable};

fn teacher<B: Backend>(family: &str, device: &B::Device) -> TaskModel<B> {
    let config = match family {
        "bert" => ModelConfig::bert(40, 16, 4, 4, 24),
        _ => ModelConfig::gpt2(40, 16, 4, 4, 24),
    };
    let config = ModelConfig {
        max_positions: 16,
        ..config
    };
    let backbone = Transformer::new(&config, device);
    crate::materialized(match family {
        "bert" => TaskModel::classifier(backbone, ClassifierHead::new(16, 3, 5, device)),
        _ => TaskModel::backbone(backbone),
    })
}

fn input<B: Backend>(device: &B::Device) -> (ModelInput<B>, Tensor<B, 1, Int>) {
    let ids: Vec<i64> = (0..3 * 6).map(|i| (i * 7 + 1) % 40).collect();
    let mut mask = vec![1.0f32; 18];
    mask[17] = 0.0;
    mask[16] = 0.0;
    let input = ModelInput::new(Tensor::from_data(TensorData::new(ids, [3, 6]), device))
        .with_attention_mask(Tensor::from_data(TensorData::new(mask, [3, 6]), device));
    let labels = Tensor::from_data(TensorData::new(vec![0i64, 2, 1], [3]), device);
    (input, labels)
}

fn every_term() -> DistillSection {
    DistillSection {
        enabled: true,
        ce_weight: 0.0,
        ..DistillSection::default()
    }
}

/// Perturbs every float parameter of `m` by a fixed pattern of size `eps`.
fn perturbed<B: Backend, M: Module<B>>(m: M, eps: f32) -> M {
    struct Nudge(f32, usize);
    impl<B: Backend> burn::module::ModuleMapper<B> for Nudge {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            self.1 += 1;
            let t = p.val();
            let n = t.shape().num_elements();
            let k = self.1;
            let noise: Vec<f32> = (0..n)
                .map(|i| (((i + 1) * 7919 + k * 104_729) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            let noise = Tensor::<B, D>::from_data(TensorData::new(noise, t.dims()), &t.device());
            Param::from_tensor(t + noise * self.0)
        }
    }
    m.map(&mut Nudge(eps, 0))
}

fn distillation_loss_vanishes_only_for_the_teacher<B: Backend>(device: &B::Device) {
    type A<B> = Autodiff<B>;
    for family in ["bert", "gpt2"] {
        let t = teacher::<B>(family, device);
        let cfg = every_term();
        let run = |student: TaskModel<B>| {
            let d: Distilled<A<B>, TaskModel<A<B>>> = with_map::<A<B>, _>(
                trainable::<A<B>, TaskModel<A<B>>>(student),
                LayerMap::identity(16, device),
            );
            let (inp, labels) = input::<A<B>>(device);
            let targets = teacher_targets::<A<B>>(&t, &inp, &cfg);
            let labels = (family == "bert").then_some(labels);
            let (l, _, terms) = distill_loss(&d, inp, labels, Draw::Eval, targets, &cfg);
            (l.into_scalar().elem::<f64>(), terms)
        };
        let (same, terms) = run(t.clone());
        assert!(
            same.abs() < 1e-9,
            "{family}: loss {same} for the teacher itself ({terms:?})"
        );
        assert_eq!(terms.matching, [1, 3], "{family}: identity matching");
        let (other, terms) = run(perturbed(t.clone(), 0.05));
        assert!(
            other > 1e-4 && terms.logits > 0.0 && terms.layers > 0.0,
            "{family}: loss {other} for another model ({terms:?})"
        );
    }
}

/// One step of the loss's gradient moves the student and the map; the teacher is on the
/// inner backend, so nothing can reach it, and its outputs stay what they were.
fn distillation_gradient_reaches_the_student_and_the_map<B: Backend>(device: &B::Device) {
    type A<B> = Autodiff<B>;
    let t = teacher::<B>("bert", device);
    let cfg = every_term();
    let (inp, labels) = input::<A<B>>(device);
    let before = t
        .class_logits(ModelInput::new(inp.ids.clone().inner()))
        .unwrap()
        .into_data();
    let student: Distilled<A<B>, TaskModel<A<B>>> = with_map::<A<B>, _>(
        trainable::<A<B>, TaskModel<A<B>>>(perturbed(t.clone(), 0.05)),
        LayerMap::identity(16, device),
    );
    let targets = teacher_targets::<A<B>>(&t, &inp, &cfg);
    let (l, _, _) = distill_loss(
        &student,
        inp.clone(),
        Some(labels),
        Draw::Eval,
        targets,
        &cfg,
    );
    let grads = l.backward();
    let map_grad = student
        .map
        .weight
        .val()
        .grad(&grads)
        .expect("the map takes part");
    assert!(map_grad.abs().sum().into_scalar().elem::<f32>() > 0.0);
    let layer_grad = student.student.backbone.layers[1]
        .ffn
        .up
        .weight
        .as_ref()
        .unwrap()
        .val()
        .grad(&grads)
        .expect("the student takes part");
    assert!(layer_grad.abs().sum().into_scalar().elem::<f32>() > 0.0);
    let head_grad = student
        .student
        .head
        .as_ref()
        .unwrap()
        .linear
        .weight
        .val()
        .grad(&grads);
    assert!(
        head_grad.is_some(),
        "the head takes part through the logits"
    );
    let after = t
        .class_logits(ModelInput::new(inp.ids.inner()))
        .unwrap()
        .into_data();
    assert_eq!(before, after, "the teacher is unchanged");
}

/// The map alone, trained on the layer term against a teacher whose hidden states are a
/// fixed linear image of the student's, brings the term down by two orders of magnitude.
fn the_layer_map_trains<B: Backend>(device: &B::Device) {
    type A<B> = Autodiff<B>;
    let t = teacher::<B>("bert", device);
    let cfg = DistillSection {
        enabled: true,
        logit_weight: 0.0,
        layer_weight: 1.0,
        ce_weight: 0.0,
        ..DistillSection::default()
    };
    // The student is the teacher; the teacher's layer outputs are targets 2 h + 0.5.
    let (inp, _) = input::<A<B>>(device);
    let mut targets = teacher_targets::<A<B>>(&t, &inp, &cfg);
    targets.hidden = targets.hidden.into_iter().map(|h| h * 2.0 + 0.5).collect();
    let mut model = with_map::<A<B>, _>(
        trainable::<A<B>, TaskModel<A<B>>>(t.clone()),
        LayerMap::identity(16, device),
    );
    let mut opt = AdamConfig::new().init::<A<B>, LayerMap<A<B>>>();
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..300 {
        let tg = shears_train::distill::Targets {
            logits: targets.logits.clone(),
            hidden: targets.hidden.clone(),
        };
        let (l, _, terms) = distill_loss(&model, inp.clone(), None, Draw::Eval, tg, &cfg);
        last = terms.layers;
        first.get_or_insert(last);
        let mut grads = l.backward();
        let g = GradientsParams::from_module(&mut grads, &model.map);
        model.map = opt.step(0.02, model.map, g);
    }
    let first = first.unwrap();
    assert!(last < first / 100.0, "layer term {first} -> {last}");
    // Restricted to some student dimensions (a pruned hidden width), the map keeps those
    // rows.
    let kept = model.map.clone().valid().keep_inputs(&[0, 3, 7]);
    assert_eq!(kept.weight.val().dims(), [3, 16]);
}

#[test]
fn layers_match_monotonically_from_the_last() {
    // Teacher layer 1 prefers student layer 1; teacher layer 0 then picks among 0..=1.
    assert_eq!(
        match_layers(&[vec![0.1, 0.5, 0.9], vec![0.8, 0.2, 0.3]]),
        [0, 1]
    );
    // Teacher layer 1 prefers student 0: teacher 0 can only take 0 as well.
    assert_eq!(
        match_layers(&[vec![0.9, 0.1, 0.2], vec![0.1, 0.5, 0.9]]),
        [0, 0]
    );
    // An identity-like table gives the identity.
    let t: Vec<Vec<f32>> = (0..3)
        .map(|i| (0..4).map(|j| (i as f32 + 1.0 - j as f32).abs()).collect())
        .collect();
    assert_eq!(match_layers(&t), [1, 2, 3]);
}

mod backend {
    use super::*;

    #[test]
    fn distillation_loss_is_zero_for_the_teacher_and_positive_otherwise() {
        on_backend!(distillation_loss_vanishes_only_for_the_teacher)
    }

    #[test]
    fn distillation_gradient_reaches_the_student_and_its_map_only() {
        on_backend!(distillation_gradient_reaches_the_student_and_the_map)
    }

    #[test]
    fn the_distillation_layer_map_trains() {
        on_backend!(the_layer_map_trains)
    }
}
