// SKELFAST_CPU_CLONES: compile a hot CPU function for several x86 ISAs (gcc target_clones picks one
// at load time) with everything inlined (flatten), so its loops vectorise on AVX2/AVX-512 without
// building the whole library for one machine. Layer: torch-free header.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SKELFAST_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), flatten))
#else
#define SKELFAST_CPU_CLONES __attribute__((flatten))
#endif
