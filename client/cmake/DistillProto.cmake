# The distill_proto library: C++ messages and gRPC stubs generated from proto/ (the same .proto
# the server and the Python stubs use), built against Debian's gRPC packages:
#   apt-get install cmake g++ pkg-config libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
# Included by client/cpp (the examples) and client/c (libdistill).
find_package(PkgConfig REQUIRED)
pkg_check_modules(GRPCPP REQUIRED IMPORTED_TARGET grpc++ protobuf)
find_program(PROTOC protoc REQUIRED)
find_program(GRPC_CPP_PLUGIN grpc_cpp_plugin REQUIRED)

set(DISTILL_PROTO_ROOT "${CMAKE_CURRENT_LIST_DIR}/../../proto")
set(DISTILL_PROTO_FILE "distill_serve/v1/distill.proto")
set(DISTILL_PROTO_GEN "${CMAKE_CURRENT_BINARY_DIR}/gen")
set(DISTILL_PROTO_SRCS
    "${DISTILL_PROTO_GEN}/distill_serve/v1/distill.pb.cc"
    "${DISTILL_PROTO_GEN}/distill_serve/v1/distill.grpc.pb.cc")
file(MAKE_DIRECTORY "${DISTILL_PROTO_GEN}")
add_custom_command(
  OUTPUT ${DISTILL_PROTO_SRCS}
  COMMAND ${PROTOC} -I "${DISTILL_PROTO_ROOT}" --cpp_out "${DISTILL_PROTO_GEN}"
          --grpc_out "${DISTILL_PROTO_GEN}" --plugin=protoc-gen-grpc=${GRPC_CPP_PLUGIN}
          "${DISTILL_PROTO_FILE}"
  DEPENDS "${DISTILL_PROTO_ROOT}/${DISTILL_PROTO_FILE}"
  COMMENT "protoc ${DISTILL_PROTO_FILE}")

add_library(distill_proto STATIC ${DISTILL_PROTO_SRCS})
# Position-independent, so that a shared library (libdistill) can link it in.
set_target_properties(distill_proto PROPERTIES POSITION_INDEPENDENT_CODE ON)
target_include_directories(distill_proto PUBLIC "${DISTILL_PROTO_GEN}")
target_link_libraries(distill_proto PUBLIC PkgConfig::GRPCPP)
