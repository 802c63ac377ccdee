//! GEMMs through cuBLASLt: bf16 inputs, fp32 accumulation, bf16 or fp32 output. The algorithm
//! cuBLASLt's heuristic picks is cached per shape, so the step loop asks for it once.
//! The CPU oracle of the same names is src/ops/cpu/matmul.rs.
//!
//! Row-major tensors are column-major tensors transposed, so y[N,O] = x[N,I]·W[O,I]ᵀ is, in
//! cuBLAS's column-major terms, yᶜ[O,N] = Wᶜ[I,O]ᵀ · xᶜ[I,N].

use super::CudaEngine;
use anyhow::{anyhow, ensure, Result};
use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr};
use half::bf16;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

/// An output element type of a GEMM.
pub trait GemmOut: DeviceRepr {
    const DTYPE: sys::cudaDataType;
}
impl GemmOut for f32 {
    const DTYPE: sys::cudaDataType = sys::cudaDataType_t::CUDA_R_32F;
}
impl GemmOut for bf16 {
    const DTYPE: sys::cudaDataType = sys::cudaDataType_t::CUDA_R_16BF;
}

/// A column-major GEMM's shape: C[m,n] = op(A)[m,k] · op(B)[k,n].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmShape {
    pub transa: bool,
    pub transb: bool,
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub lda: i64,
    pub ldb: i64,
    pub ldc: i64,
    pub c_f32: bool,
}

/// Descriptors and the chosen algorithm of one shape.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each handle was created once in `Gemm::plan` and is destroyed once here.
        unsafe {
            let _ = lt::destroy_matmul_desc(self.desc);
            let _ = lt::destroy_matrix_layout(self.a);
            let _ = lt::destroy_matrix_layout(self.b);
            let _ = lt::destroy_matrix_layout(self.c);
        }
    }
}

/// Handles of a plan being built, destroyed on drop unless handed to a `Plan`.
#[derive(Default)]
struct Handles {
    desc: Option<sys::cublasLtMatmulDesc_t>,
    a: Option<sys::cublasLtMatrixLayout_t>,
    b: Option<sys::cublasLtMatrixLayout_t>,
    c: Option<sys::cublasLtMatrixLayout_t>,
}

impl Drop for Handles {
    fn drop(&mut self) {
        // SAFETY: each handle here was created once and is owned by nobody else.
        unsafe {
            if let Some(d) = self.desc {
                let _ = lt::destroy_matmul_desc(d);
            }
            for l in [self.a, self.b, self.c].into_iter().flatten() {
                let _ = lt::destroy_matrix_layout(l);
            }
        }
    }
}

/// The cuBLASLt handle, its workspace, and the per-shape plan cache.
pub struct Gemm {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    plans: Mutex<HashMap<(GemmShape, [u32; 3]), Plan>>,
}

// SAFETY: the handle is used only through &self calls that serialise on the engine's one stream;
// the plan cache is behind a mutex.
unsafe impl Send for Gemm {}
unsafe impl Sync for Gemm {}

impl Drop for Gemm {
    fn drop(&mut self) {
        self.plans.lock().map(|mut p| p.clear()).ok();
        // SAFETY: created in `new`, destroyed once.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

/// cuBLASLt's recommended workspace on Hopper.
const WORKSPACE_BYTES: usize = 32 << 20;

impl Gemm {
    pub fn new(eng: &CudaEngine) -> Result<Self> {
        // SAFETY: only asks the dynamic loader whether libcublasLt can be opened.
        if !unsafe { sys::is_culib_present() } {
            anyhow::bail!(
                "cuBLASLt (libcublasLt) was not found: the GEMMs need the CUDA toolkit's cuBLAS 13"
            );
        }
        let handle =
            lt::create_handle().map_err(|e| anyhow!("creating a cuBLASLt handle: {e:?}"))?;
        let workspace = eng.zeros::<u8>(WORKSPACE_BYTES)?;
        Ok(Gemm {
            handle,
            workspace,
            plans: Mutex::new(HashMap::new()),
        })
    }

    fn plan(&self, s: GemmShape, align: [u32; 3]) -> Result<Plan> {
        let err = |what: &str, e: lt::CublasError| anyhow!("cuBLASLt {what} for {s:?}: {e:?}");
        let bf = sys::cudaDataType_t::CUDA_R_16BF;
        let c_type = if s.c_f32 { f32::DTYPE } else { bf16::DTYPE };
        let (ar, ac) = if s.transa { (s.k, s.m) } else { (s.m, s.k) };
        let (br, bc) = if s.transb { (s.n, s.k) } else { (s.k, s.n) };
        // Each handle is owned as soon as it exists: a failure further on destroys the ones made.
        let mut made = Handles::default();
        let a = *made
            .a
            .insert(lt::create_matrix_layout(bf, ar, ac, s.lda).map_err(|e| err("layout A", e))?);
        let b = *made
            .b
            .insert(lt::create_matrix_layout(bf, br, bc, s.ldb).map_err(|e| err("layout B", e))?);
        let c = *made.c.insert(
            lt::create_matrix_layout(c_type, s.m, s.n, s.ldc).map_err(|e| err("layout C", e))?,
        );
        let desc = *made.desc.insert(
            lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, f32::DTYPE)
                .map_err(|e| err("descriptor", e))?,
        );
        // cublasOperation_t as the i32 it is: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1.
        let (opa, opb) = (s.transa as i32, s.transb as i32);
        let pref = lt::create_matmul_pref().map_err(|e| err("preference", e))?;
        // SAFETY: every pointer passed below points at a live local of the size given.
        let chosen = (|| -> Result<sys::cublasLtMatmulAlgo_t> {
            unsafe {
                let size = std::mem::size_of::<i32>();
                lt::set_matmul_desc_attribute(
                    desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                    &opa as *const _ as *const c_void,
                    size,
                )
                .map_err(|e| err("transa", e))?;
                lt::set_matmul_desc_attribute(
                    desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                    &opb as *const _ as *const c_void,
                    size,
                )
                .map_err(|e| err("transb", e))?;
                let ws = WORKSPACE_BYTES as u64;
                lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const _ as *const c_void,
                std::mem::size_of::<u64>(),
            )
            .map_err(|e| err("workspace preference", e))?;
                use sys::cublasLtMatmulPreferenceAttributes_t as Pref;
                let [aa, ab, ac] = align;
                for (attr, bytes) in [
                    (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, aa),
                    (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, ab),
                    (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, ac),
                    (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, ac),
                ] {
                    lt::set_matmul_pref_attribute(
                        pref,
                        attr,
                        &bytes as *const u32 as *const c_void,
                        std::mem::size_of::<u32>(),
                    )
                    .map_err(|e| err("alignment preference", e))?;
                }
                Ok(
                    lt::get_matmul_algo_heuristic(self.handle, desc, a, b, c, c, pref)
                        .map_err(|e| err("algorithm heuristic (no algorithm for this shape)", e))?
                        .algo,
                )
            }
        })();
        // SAFETY: created above, destroyed once, whichever way the attributes went.
        let _ = unsafe { lt::destroy_matmul_pref(pref) };
        let algo = chosen?;
        let plan = Plan {
            desc,
            a,
            b,
            c,
            algo,
        };
        std::mem::forget(made); // the plan owns the handles now
        Ok(plan)
    }

    /// C = alpha·op(A)·op(B) + beta·C in column-major terms, A and B bf16, C `T`.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm<T: GemmOut>(
        &self,
        eng: &CudaEngine,
        s: GemmShape,
        alpha: f32,
        a: &impl DevicePtr<bf16>,
        b: &impl DevicePtr<bf16>,
        beta: f32,
        c: &mut impl DevicePtrMut<T>,
        op: &str,
    ) -> Result<()> {
        ensure!(
            s.c_f32 == (T::DTYPE == f32::DTYPE),
            "{op}: GemmShape.c_f32 does not match the output type"
        );
        let stream = &eng.stream;
        let (a_ptr, _ra) = a.device_ptr(stream);
        let (b_ptr, _rb) = b.device_ptr(stream);
        let (c_ptr, _rc) = c.device_ptr_mut(stream);
        // Views into the flat parameter buffer sit at any offset; cuBLASLt assumes 256-byte
        // alignment unless told, so the plan is chosen for the pointers' real alignment.
        let align = |ptr: u64| (1u32 << ptr.trailing_zeros().min(8)).min(256);
        let key = (s, [align(a_ptr), align(b_ptr), align(c_ptr)]);
        let mut plans = self
            .plans
            .lock()
            .map_err(|_| anyhow!("{op}: the GEMM plan cache is poisoned"))?;
        let p = match plans.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(self.plan(s, key.1).map_err(|e| e.context(op.to_string()))?)
            }
        };
        let (w_ptr, _rw) = self.workspace.device_ptr(stream);
        // SAFETY: the layouts were built for exactly this shape and these element types; the
        // callers check that the buffers hold the elements the layouts reach.
        unsafe {
            lt::matmul(
                self.handle,
                p.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                a_ptr as *const c_void,
                p.a,
                b_ptr as *const c_void,
                p.b,
                c_ptr as *const c_void,
                p.c,
                c_ptr as *mut c_void,
                p.c,
                &p.algo,
                w_ptr as *mut c_void,
                WORKSPACE_BYTES,
                stream.cu_stream() as *mut _,
            )
        }
        .map_err(|e| anyhow!("{op} ({s:?}): {e:?}"))
    }
}

/// y[N,O] = x[N,I] · W[O,I]ᵀ (y bf16 or f32, written).
pub fn matmul_forward<T: GemmOut>(
    eng: &CudaEngine,
    gemm: &Gemm,
    y: &mut (impl DevicePtrMut<T> + DeviceLen),
    x: &(impl DevicePtr<bf16> + DeviceLen),
    w: &(impl DevicePtr<bf16> + DeviceLen),
    n: usize,
    i: usize,
    o: usize,
) -> Result<()> {
    ensure!(
        y.elems() == n * o && x.elems() == n * i && w.elems() == o * i,
        "matmul_forward: N={n} I={i} O={o}"
    );
    let s = GemmShape {
        transa: true,
        transb: false,
        m: o as u64,
        n: n as u64,
        k: i as u64,
        lda: i as i64,
        ldb: i as i64,
        ldc: o as i64,
        c_f32: T::DTYPE == f32::DTYPE,
    };
    gemm.gemm(eng, s, 1.0, w, x, 0.0, y, "matmul_forward")
}

/// dx[N,I] = dout[N,O] · W[O,I] (bf16 or f32; written, or added to with `add_dx`);
/// dW[O,I] f32 += doutᵀ · x.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward<T: GemmOut>(
    eng: &CudaEngine,
    gemm: &Gemm,
    dx: Option<&mut (impl DevicePtrMut<T> + DeviceLen)>,
    add_dx: bool,
    dw: &mut (impl DevicePtrMut<f32> + DeviceLen),
    dout: &(impl DevicePtr<bf16> + DeviceLen),
    x: &(impl DevicePtr<bf16> + DeviceLen),
    w: &(impl DevicePtr<bf16> + DeviceLen),
    n: usize,
    i: usize,
    o: usize,
) -> Result<()> {
    ensure!(
        dw.elems() == o * i && dout.elems() == n * o && x.elems() == n * i && w.elems() == o * i,
        "matmul_backward: N={n} I={i} O={o}"
    );
    if let Some(dx) = dx {
        ensure!(dx.elems() == n * i, "matmul_backward: dx for N={n} I={i}");
        // dxᶜ[I,N] = Wᶜ[I,O] · doutᶜ[O,N]
        let s = GemmShape {
            transa: false,
            transb: false,
            m: i as u64,
            n: n as u64,
            k: o as u64,
            lda: i as i64,
            ldb: o as i64,
            ldc: i as i64,
            c_f32: T::DTYPE == f32::DTYPE,
        };
        let beta = if add_dx { 1.0 } else { 0.0 };
        gemm.gemm(eng, s, 1.0, w, dout, beta, dx, "matmul_backward dx")?;
    }
    // dWᶜ[I,O] += xᶜ[I,N] · (doutᶜ[O,N])ᵀ
    let s = GemmShape {
        transa: false,
        transb: true,
        m: i as u64,
        n: o as u64,
        k: n as u64,
        lda: i as i64,
        ldb: o as i64,
        ldc: i as i64,
        c_f32: true,
    };
    gemm.gemm(eng, s, 1.0, x, dout, 1.0, dw, "matmul_backward dw")
}

/// The element count of a device buffer or view, for shape checks.
pub trait DeviceLen {
    fn elems(&self) -> usize;
}
impl<T> DeviceLen for CudaSlice<T> {
    fn elems(&self) -> usize {
        self.len()
    }
}
impl<T> DeviceLen for cudarc::driver::CudaView<'_, T> {
    fn elems(&self) -> usize {
        self.len()
    }
}
impl<T> DeviceLen for cudarc::driver::CudaViewMut<'_, T> {
    fn elems(&self) -> usize {
        self.len()
    }
}
