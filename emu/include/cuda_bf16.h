// The software GPU's stand-in for CUDA's <cuda_bf16.h>: kernels include it by that name, and g++
// (with -I emu/include) finds this file instead. Everything lives in emu_cuda.h.
#pragma once
#include "emu_cuda.h"
