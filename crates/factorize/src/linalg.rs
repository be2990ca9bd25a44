//! The few dense linear-algebra operations the solutions need, on `faer` (pure Rust, f64).

use faer::linalg::matmul::matmul;
use faer::linalg::solvers::Solve;
use faer::{Accum, Mat, MatRef, Side};
use shears_spaces::HostTensor;

use crate::FactorizeError;

/// `a b`.
pub(crate) fn mul(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    let mut out = Mat::zeros(a.nrows(), b.ncols());
    matmul(
        out.as_mut(),
        Accum::Replace,
        a,
        b,
        1.0,
        faer::get_global_parallelism(),
    );
    out
}

/// `aᵀ b`.
pub(crate) fn tmul(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    mul(a.transpose(), b)
}

/// A row-major f32 host matrix as an f64 matrix.
pub(crate) fn from_host(t: &HostTensor) -> Mat<f64> {
    let (r, c) = (t.shape[0], t.shape[1]);
    Mat::from_fn(r, c, |i, j| t.data[i * c + j] as f64)
}

/// An f64 matrix as a row-major f32 host matrix.
pub(crate) fn to_host(m: MatRef<'_, f64>) -> HostTensor {
    let (r, c) = (m.nrows(), m.ncols());
    let mut data = Vec::with_capacity(r * c);
    for i in 0..r {
        for j in 0..c {
            data.push(m[(i, j)] as f32);
        }
    }
    HostTensor::new(vec![r, c], data)
}

/// `(U, s, V)` of a thin SVD.
pub(crate) type Svd = (Mat<f64>, Vec<f64>, Mat<f64>);

/// Thin SVD `a = U diag(s) Vᵀ`, singular values descending.
pub(crate) fn svd(a: MatRef<'_, f64>) -> Result<Svd, FactorizeError> {
    let svd = a
        .thin_svd()
        .map_err(|_| FactorizeError::Numerical { what: "SVD" })?;
    let s = svd.S().column_vector().iter().copied().collect();
    Ok((svd.U().to_owned(), s, svd.V().to_owned()))
}

/// Eigendecomposition of a symmetric matrix, `a = V diag(λ) Vᵀ`, eigenvalues ascending.
pub(crate) fn sym_eigen(a: MatRef<'_, f64>) -> Result<(Vec<f64>, Mat<f64>), FactorizeError> {
    let evd = a
        .self_adjoint_eigen(Side::Lower)
        .map_err(|_| FactorizeError::Numerical {
            what: "eigendecomposition",
        })?;
    let l = evd.S().column_vector().iter().copied().collect();
    Ok((l, evd.U().to_owned()))
}

/// Solves `a x = b` for a symmetric positive semi-definite `a` (small: rank x rank), with a
/// relative ridge so that a singular `a` (a factor with a zero column) still gives the
/// minimum-norm-like answer instead of failing.
pub(crate) fn spd_solve(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    let n = a.nrows();
    let trace: f64 = (0..n).map(|i| a[(i, i)]).sum();
    let ridge = 1e-12 * (trace / n.max(1) as f64).max(f64::MIN_POSITIVE);
    let reg = Mat::from_fn(n, n, |i, j| a[(i, j)] + if i == j { ridge } else { 0.0 });
    match reg.llt(Side::Lower) {
        Ok(llt) => llt.solve(b),
        Err(_) => {
            // Not numerically positive definite: solve through the eigendecomposition,
            // dropping the null directions.
            let (l, v) = sym_eigen(reg.as_ref()).expect("symmetric eigendecomposition");
            let top = l.iter().cloned().fold(0.0f64, f64::max);
            let vtb = tmul(v.as_ref(), b);
            let scaled = Mat::from_fn(n, b.ncols(), |i, j| {
                if l[i] > 1e-12 * top {
                    vtb[(i, j)] / l[i]
                } else {
                    0.0
                }
            });
            mul(v.as_ref(), scaled.as_ref())
        }
    }
}

/// Solves `a x = b` for a small symmetric positive semi-definite `a` given row-major
/// (`n x n`), as [`spd_solve`] does: least squares through their normal equations, for
/// callers without `faer`.
pub fn solve_symmetric(a: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    assert_eq!((a.len(), b.len()), (n * n, n), "solve_symmetric: shapes");
    let a = Mat::from_fn(n, n, |i, j| a[i * n + j]);
    let b = Mat::from_fn(n, 1, |i, _| b[i]);
    let x = spd_solve(a.as_ref(), b.as_ref());
    (0..n).map(|i| x[(i, 0)]).collect()
}
