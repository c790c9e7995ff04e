// A C++17 program using the C core through the installed package's header and library.
// tests/test_packaging.py builds it with g++ against an installed wheel.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "xenevtchn.h"

namespace {

struct PageFree {
    void operator()(void *p) const { std::free(p); }
};

}  // namespace

int main()
{
    std::unique_ptr<void, PageFree> page(std::aligned_alloc(4096, 4096));
    if (!page)
        return 2;
    xe_shinfo s{};
    if (xe_shinfo_init(&s, page.get(), XE_LAYOUT_X86_64) != 0)
        return 3;
    xe_shinfo_reset(&s);
    xe_vcpu_set_upcall_mask(&s, 0, 0);
    std::vector<int> flags;
    for (uint32_t port : {5u, 5u, 70u})
        flags.push_back(xe_2l_set_pending(&s, 0, port));
    std::printf("shinfo %zu bytes\n", xe_shinfo_size(XE_LAYOUT_X86_64));
    std::printf("flags %d %d %d\n", flags[0], flags[1], flags[2]);
    std::printf("pending 5=%d 70=%d 6=%d upcall_pending=%d\n", xe_2l_is_pending(&s, 5),
                xe_2l_is_pending(&s, 70), xe_2l_is_pending(&s, 6), xe_vcpu_upcall_pending(&s, 0));
    std::printf("pending_sel %llx\n", static_cast<unsigned long long>(xe_2l_take_pending_sel(&s, 0)));
    return 0;
}
