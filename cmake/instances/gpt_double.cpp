// cmake/instances/gpt_double.cpp: GPT<double>'s forward and backward passes compiled once for all
// of strata's own programs (tests, examples, benchmarks), which define STRATA_EXTERN_TEMPLATES
// and link this (the strata_model_double library of CMakeLists.txt).
#include <strata/model/gpt.hpp>

template class strata::GPT<double>;
