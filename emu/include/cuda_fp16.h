// The software GPU's stand-in for CUDA's <cuda_fp16.h>; everything lives in emu_cuda.h.
#pragma once
#include "emu_cuda.h"
