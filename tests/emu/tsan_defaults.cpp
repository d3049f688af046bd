// ThreadSanitizer's defaults for nuri's emulated test programs: the first race report ends the
// program, so a race fails its test. TSAN_OPTIONS in the environment still overrides. (Set here
// rather than per test because ctest's ENVIRONMENT, as gtest_discover_tests passes it, keeps only
// one variable, and some tests need another one.)
#if defined(__SANITIZE_THREAD__)
extern "C" const char* __tsan_default_options() { return "halt_on_error=1"; }
#endif
