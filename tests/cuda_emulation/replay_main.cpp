// A small executable that replays a launch script through the emulated
// kernels: what driver.py does through ctypes, for runs that must own the
// process (ThreadSanitizer has to be loaded before any thread exists, so it
// cannot come in with a library that Python loads late).
//
// Script (stdin), one command a line:
//   buffer NAME COUNT OFFSET PATH   float32 buffer of COUNT elements, OFFSET
//                                   floats past a 64-byte boundary, filled
//                                   from the raw file PATH ("-": NaN)
//   launch KERNEL GX GY GZ BX ARG... ARG = buf:NAME | u32:V | i32:V | u64:V | f32:BITS
//   dump NAME PATH                  write the buffer's raw bytes to PATH
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <vector>

extern "C" int emu_launch(const char* name, unsigned grid_x, unsigned grid_y, unsigned grid_z, unsigned block_x,
                          void** params);

namespace {

struct Buffer {
    std::vector<float> storage;
    float* data = nullptr;
    std::size_t count = 0;
};

[[noreturn]] void die(const std::string& message)
{
    std::cerr << "replay: " << message << "\n";
    std::exit(2);
}

union Arg {
    void* pointer;
    std::uint32_t u32;
    std::int32_t i32;
    std::uint64_t u64;
    float f32;
};

}  // namespace

int main()
{
    std::map<std::string, Buffer> buffers;
    std::string line;
    while (std::getline(std::cin, line)) {
        std::istringstream words(line);
        std::string command;
        if (!(words >> command)) continue;
        if (command == "buffer") {
            std::string name, path;
            std::size_t count = 0, offset = 0;
            words >> name >> count >> offset >> path;
            Buffer& b = buffers[name];
            b.storage.assign(count + offset + 16, std::numeric_limits<float>::quiet_NaN());
            const auto address = reinterpret_cast<std::uintptr_t>(b.storage.data());
            b.data = b.storage.data() + ((64 - address % 64) % 64) / sizeof(float) + offset;
            b.count = count;
            if (path != "-") {
                std::ifstream in(path, std::ios::binary);
                if (!in.read(reinterpret_cast<char*>(b.data), static_cast<std::streamsize>(count * sizeof(float))))
                    die("cannot read " + path);
            }
        } else if (command == "launch") {
            std::string kernel, token;
            unsigned gx, gy, gz, bx;
            words >> kernel >> gx >> gy >> gz >> bx;
            std::vector<Arg> args;
            while (words >> token) {
                const auto colon = token.find(':');
                const std::string kind = token.substr(0, colon), value = token.substr(colon + 1);
                Arg a{};
                if (kind == "buf") {
                    auto it = buffers.find(value);
                    if (it == buffers.end()) die("no buffer " + value);
                    a.pointer = it->second.data;
                } else if (kind == "u32") a.u32 = static_cast<std::uint32_t>(std::stoul(value));
                else if (kind == "i32") a.i32 = static_cast<std::int32_t>(std::stol(value));
                else if (kind == "u64") a.u64 = std::stoull(value);
                else if (kind == "f32") {
                    const std::uint32_t bits = static_cast<std::uint32_t>(std::stoul(value));
                    std::memcpy(&a.f32, &bits, sizeof bits);
                } else die("bad argument " + token);
                args.push_back(a);
            }
            std::vector<void*> params;
            for (auto& a : args) params.push_back(&a);
            if (emu_launch(kernel.c_str(), gx, gy, gz, bx, params.data())) die("no kernel " + kernel);
        } else if (command == "dump") {
            std::string name, path;
            words >> name >> path;
            const Buffer& b = buffers.at(name);
            std::ofstream out(path, std::ios::binary);
            out.write(reinterpret_cast<const char*>(b.data), static_cast<std::streamsize>(b.count * sizeof(float)));
            if (!out) die("cannot write " + path);
        } else {
            die("unknown command " + command);
        }
    }
    return 0;
}
