//! Moving parameters between any Burn module and a [`TensorMap`] by path, so loading,
//! saving and pruning work for every module, including a user's own attention.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use shears_spaces::{HostTensor, TensorMap};

use crate::LoadError;

/// Every float parameter of `module`, by path (`layers.0.attention.query.weight`), on the host.
pub fn export<B: Backend, M: Module<B>>(module: &M) -> TensorMap {
    let mut v = Exporter {
        path: Vec::new(),
        out: TensorMap::new(),
    };
    module.visit(&mut v);
    v.out
}

/// The shape of every float parameter of `module`, by path.
pub fn param_shapes<B: Backend, M: Module<B>>(
    module: &M,
) -> std::collections::BTreeMap<String, Vec<usize>> {
    let mut v = Shapes {
        path: Vec::new(),
        out: Default::default(),
    };
    module.visit(&mut v);
    v.out
}

/// Replaces every float parameter of `module` with the tensor of the same path in
/// `tensors`. Fails, naming the key, when a parameter is missing or has another shape, or
/// when `tensors` holds a path the module does not have.
pub fn import<B: Backend, M: Module<B>>(
    module: M,
    tensors: &TensorMap,
    device: &B::Device,
) -> Result<M, LoadError> {
    let mut m = Importer {
        path: Vec::new(),
        tensors,
        device: device.clone(),
        seen: Vec::new(),
        error: None,
    };
    let module = module.map(&mut m);
    if let Some(e) = m.error {
        return Err(e);
    }
    for (key, t) in tensors {
        if !m.seen.contains(key) {
            return Err(LoadError::UnexpectedKey {
                key: key.clone(),
                found: t.shape.clone(),
            });
        }
    }
    Ok(module)
}

/// A host tensor on a device.
pub fn to_device<B: Backend, const D: usize>(t: &HostTensor, device: &B::Device) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), device)
}

/// A device tensor on the host.
pub fn to_host<B: Backend, const D: usize>(t: Tensor<B, D>) -> HostTensor {
    let shape = t.dims().to_vec();
    let data = t
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 tensor data");
    HostTensor::new(shape, data)
}

struct Exporter {
    path: Vec<String>,
    out: TensorMap,
}

impl<B: Backend> ModuleVisitor<B> for Exporter {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.out.insert(self.path.join("."), to_host(param.val()));
    }
}

struct Shapes {
    path: Vec<String>,
    out: std::collections::BTreeMap<String, Vec<usize>>,
}

impl<B: Backend> ModuleVisitor<B> for Shapes {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.out
            .insert(self.path.join("."), param.shape().dims::<D>().to_vec());
    }
}

struct Importer<'a, B: Backend> {
    path: Vec<String>,
    tensors: &'a TensorMap,
    device: B::Device,
    seen: Vec<String>,
    error: Option<LoadError>,
}

impl<B: Backend> ModuleMapper<B> for Importer<'_, B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let key = self.path.join(".");
        let expected = param.shape().dims::<D>().to_vec();
        let Some(t) = self.tensors.get(&key) else {
            self.error
                .get_or_insert(LoadError::MissingKey { key, expected });
            return param;
        };
        self.seen.push(key.clone());
        if t.shape != expected {
            self.error.get_or_insert(LoadError::Shape {
                key,
                expected,
                found: t.shape.clone(),
            });
            return param;
        }
        // Keep the parameter trainable if it was: a fresh tensor does not require grad.
        let require_grad = param.val().is_require_grad();
        let (id, _, mapper) = param.consume();
        Param::from_mapped_value(
            id,
            to_device(t, &self.device).set_require_grad(require_grad),
            mapper,
        )
    }
}
